//! A hostile network against a real relay (`cargo bench -p skyroute --bench attack`; under
//! `cargo test` it runs a reduced size).
//!
//! The victim is a relay node in a child process (so its peak RSS is its own), configured with
//! a 64 MiB route buffer budget. Node A sends a file to node C through it over UDP on
//! loopback; first without attack, then while an attacker, also on loopback, sends in turn:
//!
//! - `handshake_flood`: link inits from fresh keys at 10x the victim's handshake rate (measured
//!   here first: Noise responses per second on one core). A pool of valid inits from fresh keys,
//!   then each re-sent with a fresh index and a valid `mac1` (the victim cannot tell them from
//!   new initiators before its ECDH). The attacker echoes every cookie reply with a valid `mac2`.
//! - `replayed_init`: an init recorded from node A (older than A's last), sent again at the
//!   same rate, cookies echoed.
//! - `route_flood`: an authenticated neighbour opens routes to the victim until refused, holds
//!   them, and keeps asking at 1,000 setups a second (twice its setup rate at the victim).
//! - `junk`: random datagrams (random sizes, some shaped as inits or data packets) at the same
//!   rate.
//!
//! Per attack it prints the transfer's goodput over the unattacked one, the victim's peak RSS
//! during it, bytes the victim sent the attacker over bytes the attacker sent, links that went
//! down, and the victim's refusals by reason. All traffic stays on 127.0.0.1; every loop is
//! bounded in time and count.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use skyroute::driver::{Options, RunningNode};
use skyroute::service::transfer::Source;
use skyroute::transport::Addr;
use skyroute_proto::link::cookie;
use skyroute_proto::wire::{Packet, HANDSHAKE_INIT_LEN};
use skyroute_proto::{noise, Event, PublicKey, RouteEvent, SecretKey};

const VICTIM_ENV: &str = "SKYROUTE_ATTACK_VICTIM";
/// The victim's route buffer budget.
const BUDGET: usize = 64 << 20;
/// No attack sends for longer than this, whatever the transfer does.
const MAX_ATTACK: Duration = Duration::from_secs(120);

fn main() {
    if std::env::var_os(VICTIM_ENV).is_some() {
        victim();
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(bench(full));
}

/// The victim process: a relay with a 64 MiB buffer budget; prints `READY <key> <udp>`, then
/// answers `status` with its status as one JSON line, until `quit` or end of input.
fn victim() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut o = Options::loopback(SecretKey::generate(&mut rand_core::OsRng));
        o.node.forward.memory_budget_bytes = BUDGET;
        let node = RunningNode::spawn(o).await.expect("victim node");
        println!("READY {} {}", node.public_key, node.listen.udp.expect("udp"));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut node = node;
        loop {
            tokio::select! {
                line = rx.recv() => match line.as_deref().map(str::trim) {
                    Some("status") => {
                        let s = node.status().await.expect("status");
                        println!("{}", serde_json::to_string(&s).expect("json"));
                    }
                    _ => break,
                },
                // As the daemon does: events nobody reads would pile up.
                _ = node.events.recv() => {}
            }
        }
        let _ = node.stop().await;
    });
}

struct Victim {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    key: PublicKey,
    addr: SocketAddr,
}

impl Victim {
    fn spawn() -> Victim {
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .env(VICTIM_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("victim process");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("victim ready");
        let w: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(w.first(), Some(&"READY"), "victim said {line:?}");
        Victim { child, stdin, stdout, key: PublicKey::from_hex(w[1]).expect("key"), addr: w[2].parse().expect("addr") }
    }

    fn status(&mut self) -> serde_json::Value {
        writeln!(self.stdin, "status").expect("ask status");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("status line");
        serde_json::from_str(&line).expect("status json")
    }

    /// Refusals by reason (the node's own and every link's), and the route buffers reserved.
    fn refusals(&mut self) -> (BTreeMap<String, u64>, f64) {
        let s = self.status();
        let reserved = s["reserved_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64;
        let mut out = BTreeMap::new();
        let maps =
            std::iter::once(&s["rejected"]).chain(s["links"].as_array().into_iter().flatten().map(|l| &l["rejected"]));
        for m in maps.filter_map(|m| m.as_object()) {
            for (k, v) in m {
                *out.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
            }
        }
        (out, reserved)
    }

    fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
    }

    fn peak_rss_mib(&self) -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kib: f64 = s
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        kib / 1024.0
    }

    fn quit(mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

/// Noise responses per second on one core (the victim's handshake rate).
fn handshake_rate(secs: f64) -> f64 {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let v = SecretKey::generate(&mut rng);
    let inits: Vec<Vec<u8>> = (0..16)
        .map(|i| {
            let k = SecretKey::generate(&mut rng);
            noise::initiate(noise::LINK_PROLOGUE, &mut rng, &k, &v.public_key(), i, 0, noise::timestamp(1)).1
        })
        .collect();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let Ok(Packet::HandshakeInit(init)) = Packet::parse(&inits[n as usize % inits.len()]) else { unreachable!() };
        std::hint::black_box(noise::respond(noise::LINK_PROLOGUE, &mut rng, &v, &init, 7).is_ok());
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// What one attack sent and got back.
#[derive(Default)]
struct Wire {
    sent: AtomicU64,
    received: AtomicU64,
    packets: AtomicU64,
}

/// Sends `make(k)` for k = 0, 1, ... at `pps` from `sock` to `to` until `stop` (or the bound);
/// a second thread reads what comes back, counts it, and sends `answer(reply)` if any (the
/// attacker echoing cookies).
fn flood(
    sock: UdpSocket,
    to: SocketAddr,
    pps: f64,
    stop: Arc<AtomicBool>,
    wire: Arc<Wire>,
    mut make: impl FnMut(u64) -> Vec<u8> + Send + 'static,
    answer: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + 'static,
) -> Vec<std::thread::JoinHandle<()>> {
    let rx = sock.try_clone().expect("socket clone");
    rx.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
    let (stop2, wire2) = (stop.clone(), wire.clone());
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 2048];
        while !stop2.load(Ordering::Relaxed) {
            if let Ok(n) = rx.recv(&mut buf) {
                wire2.received.fetch_add(n as u64, Ordering::Relaxed);
                if let Some(a) = answer(&buf[..n]) {
                    if rx.send_to(&a, to).is_ok() {
                        wire2.sent.fetch_add(a.len() as u64, Ordering::Relaxed);
                    }
                }
            }
        }
    });
    let writer = std::thread::spawn(move || {
        let start = Instant::now();
        let mut k = 0u64;
        while !stop.load(Ordering::Relaxed) && start.elapsed() < MAX_ATTACK {
            let due = (start.elapsed().as_secs_f64() * pps) as u64;
            while k < due {
                let p = make(k);
                if sock.send_to(&p, to).is_ok() {
                    wire.sent.fetch_add(p.len() as u64, Ordering::Relaxed);
                    wire.packets.fetch_add(1, Ordering::Relaxed);
                }
                k += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    vec![reader, writer]
}

/// Inits the attacker sent, by sender index, so it can echo a cookie with a valid `mac2`.
type Sent = Arc<Mutex<HashMap<u32, Vec<u8>>>>;

fn echo_cookie(victim: PublicKey, sent: Sent) -> impl Fn(&[u8]) -> Option<Vec<u8>> + Send + 'static {
    move |reply| {
        let Ok(Packet::CookieReply(r)) = Packet::parse(reply) else { return None };
        let init = sent.lock().ok()?.get(&r.receiver_index)?.clone();
        let c = cookie::open_reply(&victim, &cookie::mac1_of(&init)?, &r)?;
        let mut again = init;
        cookie::seal_macs(&mut again, &victim, Some(&c));
        Some(again)
    }
}

fn remember(sent: &Sent, p: &[u8]) {
    if let Ok(mut m) = sent.lock() {
        if m.len() > 500_000 {
            m.clear();
        }
        m.insert(u32::from_be_bytes([p[4], p[5], p[6], p[7]]), p.to_vec());
    }
}

/// Valid inits to `to` from `n` fresh keys (made on both cores).
fn fresh_inits(to: PublicKey, n: usize) -> Vec<Vec<u8>> {
    let half = n / 2;
    let make = move |seed: u64, count: usize| {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        (0..count)
            .map(|_| {
                let k = SecretKey::generate(&mut rng);
                let idx = rng.next_u32();
                let (_, mut p) = noise::initiate(noise::LINK_PROLOGUE, &mut rng, &k, &to, idx, 0, noise::timestamp(1));
                cookie::seal_macs(&mut p, &to, None);
                p
            })
            .collect::<Vec<_>>()
    };
    let other = std::thread::spawn(move || make(2, half));
    let mut v = make(3, n - half);
    v.extend(other.join().expect("init maker"));
    v
}

struct Outcome {
    name: &'static str,
    goodput_ratio: f64,
    peak_rss_mib: f64,
    reserved_mib: f64,
    amplification: Option<f64>,
    links_down: usize,
    transfer_ok: bool,
    refusals: BTreeMap<String, u64>,
    note: String,
}

async fn link_up(n: &mut RunningNode) {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), n.events.recv()).await.expect("link up in time");
        if matches!(e, Some(Event::LinkUp { .. })) {
            return;
        }
    }
}

fn links_down(n: &mut RunningNode) -> usize {
    let mut down = 0;
    while let Ok(e) = n.events.try_recv() {
        down += usize::from(matches!(e, Event::LinkDown { .. }));
    }
    down
}

async fn bench(full: bool) {
    let bytes: u64 = if full { 256 << 20 } else { 8 << 20 };
    let rate = handshake_rate(if full { 2.0 } else { 0.3 });
    let pps = 10.0 * rate;
    println!(
        "victim handshake rate {rate:.0}/s on one core: floods at {pps:.0} datagrams/s; transfer {} MiB A -> victim -> C",
        bytes >> 20
    );
    let mut victim = Victim::spawn();
    let v = victim.key;
    let a_key = SecretKey::generate(&mut rand_core::OsRng);
    let a_copy = a_key.clone();
    let mut a = RunningNode::spawn(Options::loopback(a_key)).await.expect("node A");
    let mut c =
        RunningNode::spawn(Options::loopback(SecretKey::generate(&mut rand_core::OsRng))).await.expect("node C");
    c.connect(v, Addr::Udp(victim.addr)).expect("C dials");
    a.connect(v, Addr::Udp(victim.addr)).expect("A dials");
    a.add_topology(v, c.public_key).expect("topology");
    link_up(&mut a).await;
    link_up(&mut c).await;
    let warm = a.transfer(c.public_key, Source::Bytes(1 << 20)).await.expect("warm-up");
    assert!(warm.ok, "{warm:?}");
    let mut base = Vec::new();
    for _ in 0..2 {
        let t = a.transfer(c.public_key, Source::Bytes(bytes)).await.expect("transfer");
        assert!(t.ok, "{t:?}");
        base.push(t.mbit_s);
    }
    let baseline = base.iter().sum::<f64>() / base.len() as f64;
    println!("unattacked goodput {baseline:.1} Mbit/s (runs {base:.1?})");
    let pool = fresh_inits(v, if full { 4000 } else { 400 });
    let mut out = Vec::new();
    for name in ["handshake_flood", "replayed_init", "route_flood", "junk"] {
        let (before, _) = victim.refusals();
        victim.reset_peak();
        let _ = (links_down(&mut a), links_down(&mut c));
        let stop = Arc::new(AtomicBool::new(false));
        let wire = Arc::new(Wire::default());
        let sock = UdpSocket::bind("127.0.0.1:0").expect("attacker socket");
        let mut threads = Vec::new();
        let mut greedy = None;
        match name {
            "handshake_flood" => {
                let sent: Sent = Default::default();
                let (pool, s2) = (pool.clone(), sent.clone());
                let make = move |k: u64| {
                    let mut p = pool[k as usize % pool.len()].clone();
                    if k as usize >= pool.len() {
                        // The same init under a fresh index: a new initiator as far as the
                        // victim can tell before its ECDH.
                        p[4..8].copy_from_slice(&(k as u32 ^ 0x9e37_79b9).to_be_bytes());
                        cookie::seal_macs(&mut p, &v, None);
                    }
                    remember(&s2, &p);
                    p
                };
                threads = flood(sock, victim.addr, pps, stop.clone(), wire.clone(), make, echo_cookie(v, sent));
            }
            "replayed_init" => {
                let mut rng = ChaCha20Rng::seed_from_u64(5);
                let (_, mut old) =
                    noise::initiate(noise::LINK_PROLOGUE, &mut rng, &a_copy, &v, 0x0bad_0bad, 0, noise::timestamp(1));
                cookie::seal_macs(&mut old, &v, None);
                let sent: Sent = Default::default();
                remember(&sent, &old);
                let make = move |_| old.clone();
                threads = flood(sock, victim.addr, pps, stop.clone(), wire.clone(), make, echo_cookie(v, sent));
            }
            "junk" => {
                let mut rng = ChaCha20Rng::seed_from_u64(6);
                let make = move |k: u64| {
                    let len = match k % 3 {
                        0 => HANDSHAKE_INIT_LEN,
                        1 => 16 + 16 + 16 * (1 + (rng.next_u32() as usize % 80)),
                        _ => 1 + rng.next_u32() as usize % 1400,
                    };
                    let mut p = vec![0u8; len];
                    rng.fill_bytes(&mut p);
                    // Shaped as an init or a data packet (version, type, zero reserved bytes).
                    let first = [Some(0x11), Some(0x13), None][(k % 3) as usize];
                    if let Some(b) = first {
                        p[0] = b;
                        p[2..4].fill(0);
                    }
                    p
                };
                threads = flood(sock, victim.addr, pps, stop.clone(), wire.clone(), make, |_| None);
            }
            _ => {
                let mut g =
                    RunningNode::spawn(Options::loopback(SecretKey::generate(&mut rand_core::OsRng))).await.expect("G");
                g.connect(v, Addr::Udp(victim.addr)).expect("G dials");
                link_up(&mut g).await;
                let stop2 = stop.clone();
                greedy = Some(tokio::spawn(async move {
                    let (mut held, mut refused, mut asked) = (0u64, 0u64, 0u64);
                    let mut first_refusal = None;
                    // Once refused it keeps asking, at twice the victim's per-neighbour setup
                    // rate (what it would get past a limit, and no more of its own CPU, which
                    // shares this machine with A and C).
                    let mut pace = tokio::time::interval(Duration::from_millis(1));
                    while !stop2.load(Ordering::Relaxed) && asked < 200_000 {
                        if first_refusal.is_some() {
                            pace.tick().await;
                        }
                        asked += 1;
                        let Ok(r) = g.open_route(vec![v]).await else { break };
                        let outcome = tokio::time::timeout(Duration::from_secs(5), async {
                            while let Some(e) = g.events.recv().await {
                                match e {
                                    Event::Route(RouteEvent::Ready { route }) if route == r => return true,
                                    Event::Route(RouteEvent::Failed { route, .. }) if route == r => return false,
                                    _ => {}
                                }
                            }
                            false
                        })
                        .await;
                        match outcome {
                            Ok(true) => held += 1,
                            _ => {
                                refused += 1;
                                first_refusal.get_or_insert(held);
                            }
                        }
                    }
                    let _ = g.stop().await;
                    format!("greedy neighbour: {held} routes held, refused {refused} of {asked} (first refusal after {} routes)", first_refusal.unwrap_or(held))
                }));
                // Let it take what it may before the transfer starts.
                tokio::time::sleep(Duration::from_millis(if full { 2000 } else { 500 })).await;
            }
        }
        let t = a.transfer(c.public_key, Source::Bytes(bytes)).await.expect("transfer under attack");
        // Read while the attack still holds what it took.
        let (after, reserved_mib) = victim.refusals();
        stop.store(true, Ordering::Relaxed);
        for th in threads {
            let _ = th.join();
        }
        let note = match greedy {
            Some(h) => h.await.unwrap_or_default(),
            None => format!("{} datagrams sent", wire.packets.load(Ordering::Relaxed)),
        };
        let refusals: BTreeMap<String, u64> = after
            .iter()
            .map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let sent = wire.sent.load(Ordering::Relaxed);
        let o = Outcome {
            name,
            goodput_ratio: t.mbit_s / baseline,
            peak_rss_mib: victim.peak_rss_mib(),
            reserved_mib,
            amplification: (sent > 0).then(|| wire.received.load(Ordering::Relaxed) as f64 / sent as f64),
            links_down: links_down(&mut a) + links_down(&mut c),
            transfer_ok: t.ok,
            refusals,
            note,
        };
        println!(
            "{:<16} goodput {:.3} of unattacked  victim peak RSS {:.1} MiB (buffers reserved {:.1} of {} MiB)  amplification {}  links down {}  transfer {}  refusals {:?}  ({})",
            o.name,
            o.goodput_ratio,
            o.peak_rss_mib,
            o.reserved_mib,
            BUDGET >> 20,
            o.amplification.map_or("n/a (authenticated)".into(), |x| format!("{x:.3}")),
            o.links_down,
            if o.transfer_ok { "ok" } else { "FAILED" },
            o.refusals,
            o.note
        );
        out.push(o);
    }
    let json: Vec<serde_json::Value> = out
        .iter()
        .map(|o| {
            serde_json::json!({
                "attack": o.name, "goodput_ratio": o.goodput_ratio, "victim_peak_rss_mib": o.peak_rss_mib, "reserved_mib": o.reserved_mib,
                "amplification": o.amplification, "links_down": o.links_down, "transfer_ok": o.transfer_ok,
                "refusals": o.refusals,
            })
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({ "handshake_rate": rate, "flood_pps": pps, "baseline_mbit_s": baseline,
            "budget_mib": BUDGET >> 20, "attacks": json })
    );
    for n in [a, c] {
        let _ = n.stop().await;
    }
    victim.quit();
    // Under `cargo test` the reduced run must still hold what cannot depend on the machine.
    if !full {
        for o in &out {
            assert!(o.transfer_ok && o.links_down == 0, "{}: the transfer or a link broke", o.name);
            assert!(o.amplification.is_none_or(|x| x <= 1.0), "{}: amplification {:?}", o.name, o.amplification);
            assert!(o.reserved_mib <= (BUDGET >> 20) as f64, "{}: over the buffer budget", o.name);
        }
    }
}
