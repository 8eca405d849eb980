//! `skyroute sim moving-car`: a car drives past a road of WiFi nodes while its LTE link flaps
//! and changes latency; a backbone leads to a server. One session carries a voice flow (car to
//! server, 50 frames/s of 160 B, deadline 150 ms) and a bulk download (server to car). The
//! same seeded world runs under four strategies: skyroute's coded multi-route sessions and
//! three baselines.
//!
//! ```text
//!   car ~~ wifi 0..N (in range a few seconds each, lossy) -- backbone b0..b2 --\
//!   car ~~ lte (flaps, latency drifts) ------------------- backbone b3 --------- server
//! ```

use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use skyroute_proto::{NodeConfig, SessionConfig, SessionEvent, SessionId, Strategy};

use super::{WireSpec, World};

const WIFI: usize = 8;
const FRAME_INTERVAL: Duration = Duration::from_millis(20);
const FRAME_LEN: usize = 160;
const DEADLINE: Duration = Duration::from_millis(150);

/// The world's schedule, drawn from the seed before any strategy runs: identical for all.
#[derive(Debug, Clone)]
struct Schedule {
    /// Per WiFi node: in-range windows (from, to) since the start.
    wifi: Vec<Vec<(Duration, Duration)>>,
    wifi_loss: Vec<f64>,
    /// LTE down windows, and (from, latency) changes.
    lte_down: Vec<(Duration, Duration)>,
    lte_latency: Vec<(Duration, Duration)>,
}

fn schedule(seed: u64, duration: Duration) -> Schedule {
    // One random stream per kind of event, so a shorter run is a prefix of a longer one.
    let stream = |salt: u64| {
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x6361_7221 ^ (salt << 32));
        move || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut unit = stream(1);
    let mut wifi = vec![Vec::new(); WIFI];
    // The car passes a WiFi node every 3-5 s and stays in range 4-7 s, so ranges overlap
    // most of the time, with occasional gaps.
    let mut t = 0.0;
    let mut i = 0;
    while t < duration.as_secs_f64() {
        let stay = 4.0 + 3.0 * unit();
        wifi[i % WIFI].push((Duration::from_secs_f64(t), Duration::from_secs_f64(t + stay)));
        t += 3.0 + 2.0 * unit();
        i += 1;
    }
    let mut unit = stream(2);
    let wifi_loss = (0..WIFI).map(|_| 0.02 + 0.13 * unit()).collect();
    // LTE drops out for 0.5-3.5 s every 15-45 s. The world keeps some physical connectivity
    // at all times (no strategy can deliver through a total blackout, and that is not what
    // is measured): a drop that would fall where no WiFi node is in range is moved later.
    let covered = |a: f64, b: f64| {
        let mut t = a;
        while t < b {
            if !wifi.iter().flatten().any(|(x, y)| x.as_secs_f64() <= t && y.as_secs_f64() > t + 0.05) {
                return false;
            }
            t += 0.05;
        }
        true
    };
    let mut unit = stream(3);
    let mut lte_down = Vec::new();
    let mut t = 10.0 + 20.0 * unit();
    while t < duration.as_secs_f64() {
        let d = 0.5 + 3.0 * unit();
        let mut start = t;
        while start < t + 10.0 && !covered(start - 0.5, start + d + 0.5) {
            start += 0.25;
        }
        if start < t + 10.0 {
            lte_down.push((Duration::from_secs_f64(start), Duration::from_secs_f64(start + d)));
        }
        t = start + d + 15.0 + 30.0 * unit();
    }
    let mut unit = stream(4);
    let mut lte_latency = Vec::new();
    let mut t = 0.0;
    while t < duration.as_secs_f64() {
        lte_latency.push((Duration::from_secs_f64(t), Duration::from_millis(25 + (60.0 * unit()) as u64)));
        t += 5.0 + 10.0 * unit();
    }
    Schedule { wifi, wifi_loss, lte_down, lte_latency }
}

/// Complement of in-range windows within the run: when the wire is down.
fn gaps(windows: &[(Duration, Duration)], end: Duration) -> Vec<(Duration, Duration)> {
    let mut out = Vec::new();
    let mut t = Duration::ZERO;
    for (a, b) in windows {
        if *a > t {
            out.push((t, *a));
        }
        t = t.max(*b);
    }
    out.push((t, end + Duration::from_secs(3600)));
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct StrategyReport {
    pub session_breaks: u64,
    pub deadline_met: f64,
    pub bulk_goodput_bytes_per_s: f64,
    pub overhead: f64,
    pub route_changes: u64,
    pub frames_sent: u64,
    pub frames_in_time: u64,
    pub bulk_bytes: u64,
    pub repair_symbols: u64,
    pub path_failures: u64,
    /// Per second: fraction of frames in time, and bulk bytes received.
    #[serde(skip)]
    pub timeline: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Strategies {
    pub skyroute: StrategyReport,
    pub single_route: StrategyReport,
    pub min_rtt: StrategyReport,
    pub duplicate_all: StrategyReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct CarReport {
    pub scenario: &'static str,
    pub seed: u64,
    pub duration_s: f64,
    pub strategies: Strategies,
    pub wall_s: f64,
}

impl CarReport {
    pub fn all(&self) -> [(&'static str, &StrategyReport); 4] {
        let s = &self.strategies;
        [
            ("skyroute", &s.skyroute),
            ("single_route", &s.single_route),
            ("min_rtt", &s.min_rtt),
            ("duplicate_all", &s.duplicate_all),
        ]
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "moving car, seed {}, {:.0} simulated s ({:.1} s wall)\n{:<14} {:>7} {:>13} {:>15} {:>9} {:>8}\n",
            self.seed,
            self.duration_s,
            self.wall_s,
            "strategy",
            "breaks",
            "deadline_met",
            "bulk (KB/s)",
            "overhead",
            "changes"
        );
        for (name, r) in self.all() {
            out += &format!(
                "{:<14} {:>7} {:>13.4} {:>15.1} {:>9.3} {:>8}\n",
                name,
                r.session_breaks,
                r.deadline_met,
                r.bulk_goodput_bytes_per_s / 1000.0,
                r.overhead,
                r.route_changes
            );
        }
        out
    }
}

/// Builds the world: returns it and the indexes (car, server).
fn build(seed: u64, duration: Duration, sched: &Schedule, cfg: &SessionConfig) -> (World, usize, usize, Vec<usize>) {
    let mut w = World::new(seed);
    let nc = NodeConfig::default();
    let car = w.add_node(nc.clone());
    let server = w.add_node(nc.clone());
    let backbone: Vec<usize> = (0..4).map(|_| w.add_node(nc.clone())).collect();
    let wifi: Vec<usize> = (0..WIFI).map(|_| w.add_node(nc.clone())).collect();
    let lte = w.add_node(nc.clone());
    let wired = WireSpec { latency: Duration::from_millis(8), bandwidth: 6_250_000, ..WireSpec::default() };
    for &b in &backbone {
        w.add_wire(b, server, wired.clone());
        w.connect(b, server);
    }
    for (i, &ap) in wifi.iter().enumerate() {
        let b = backbone[i % 3];
        w.add_wire(ap, b, WireSpec { latency: Duration::from_millis(4), ..wired.clone() });
        w.connect(ap, b);
        let spec = WireSpec {
            latency: Duration::from_millis(3),
            bandwidth: 1_000_000,
            loss: sched.wifi_loss[i],
            down: gaps(&sched.wifi[i], duration),
            ..WireSpec::default()
        };
        w.add_wire(car, ap, spec);
    }
    w.add_wire(lte, backbone[3], WireSpec { latency: Duration::from_millis(10), ..wired.clone() });
    w.connect(lte, backbone[3]);
    let spec = WireSpec {
        latency: sched.lte_latency[0].1,
        bandwidth: 500_000,
        loss: 0.01,
        down: sched.lte_down.clone(),
        ..WireSpec::default()
    };
    w.add_wire(car, lte, spec);
    // Routes come from discovery: the graph of the nodes' signed link announcements (each
    // node announces its wires, the car and the access nodes their radio links too).
    let g = w.discovered().graph();
    w.add_sessions(car, cfg.clone(), g.clone());
    w.add_sessions(server, cfg.clone(), g);
    let mut others = wifi;
    others.push(lte);
    (w, car, server, others)
}

/// Runs one strategy on the seeded world.
pub fn run_strategy(seed: u64, duration: Duration, strategy: Strategy) -> StrategyReport {
    let sched = schedule(seed, duration);
    let cfg = SessionConfig {
        strategy,
        session_timeout: Duration::from_secs(5),
        path_window: 96 << 10,
        ..SessionConfig::default()
    };
    let (mut w, car, server, access) = build(seed, duration, &sched, &cfg);
    let lte = *access.last().expect("lte node");
    let wifi = &access[..WIFI];
    let start = w.now();
    // Radio events: associate with a WiFi node when it comes in range; LTE redials after flaps.
    let mut connects: Vec<(Duration, usize)> = Vec::new();
    for (i, wins) in sched.wifi.iter().enumerate() {
        for (a, _) in wins {
            connects.push((*a, wifi[i]));
        }
    }
    connects.push((Duration::ZERO, lte));
    for (_, b) in &sched.lte_down {
        connects.push((*b, lte));
    }
    connects.sort();
    let mut latency_changes = sched.lte_latency.clone();
    latency_changes.reverse();
    connects.reverse();

    let server_key = w.key(server);
    let mut car_sid: Option<SessionId> = None;
    let mut server_sid: Option<SessionId> = None;
    let mut connect_at = Some(Duration::from_millis(200));
    let mut breaks = 0u64;
    let mut frame_seq = 0u64;
    let mut frames_in_time = 0u64;
    let mut bulk_bytes = 0u64;
    let seconds = duration.as_secs() as usize + 1;
    let mut tl_frames = vec![(0u64, 0u64); seconds];
    let mut tl_bulk = vec![0u64; seconds];
    let mut route_bytes = 0u64;
    let mut repair = 0u64;
    let mut path_failures = 0u64;
    let mut route_changes = 0u64;
    let fill = vec![0x5au8; 64 << 10];
    let mut next_frame = start + Duration::from_millis(500);
    let end = start + duration;
    let harvest = |w: &World, car_sid: Option<SessionId>, server_sid: Option<SessionId>| {
        let mut bytes = 0;
        let mut rep = 0;
        let mut fails = 0;
        let mut opened = 0;
        if let Some(s) = car_sid.and_then(|id| w.host(car).sessions().stats(id)) {
            bytes += s.route_bytes_sent;
            rep += s.repair_sent;
            fails += s.path_failures + s.path_suspects;
            opened += s.paths_opened;
        }
        if let Some(s) = server_sid.and_then(|id| w.host(server).sessions().stats(id)) {
            bytes += s.route_bytes_sent;
            rep += s.repair_sent;
        }
        (bytes, rep, fails, opened)
    };
    while w.now() < end {
        let now = w.now();
        let since = now - start;
        while connects.last().is_some_and(|(t, _)| *t <= since) {
            let (_, peer) = connects.pop().expect("checked");
            w.connect(car, peer);
        }
        while latency_changes.last().is_some_and(|(t, _)| *t <= since) {
            let (_, lat) = latency_changes.pop().expect("checked");
            if let Some(s) = w.wire_mut(car, lte) {
                s.latency = lat;
            }
        }
        if car_sid.is_none() && connect_at.is_some_and(|t| since >= t) {
            car_sid = w.act_host(car, |h, now| h.connect(now, server_key, None)).ok();
            connect_at = None;
        }
        // Voice: one frame every 20 ms carrying its sequence number and send time.
        if now >= next_frame {
            if let Some(sid) = car_sid.filter(|s| w.host(car).sessions().is_established(*s)) {
                let mut frame = vec![0u8; FRAME_LEN];
                frame[..8].copy_from_slice(&frame_seq.to_be_bytes());
                let sent_ns = (now - start).as_nanos() as u64;
                frame[8..16].copy_from_slice(&sent_ns.to_be_bytes());
                let _ = w.act_host(car, |h, now| h.send_datagram(now, sid, &frame, DEADLINE));
                let sec = ((now - start).as_secs() as usize).min(seconds - 1);
                tl_frames[sec].0 += 1;
                frame_seq += 1;
            }
            next_frame += FRAME_INTERVAL;
        }
        // Bulk: the server keeps its stream full.
        if let Some(sid) = server_sid {
            if w.host(server).sessions().stream_room(sid) > 0 {
                let _ = w.act_host(server, |h, now| h.stream_write(now, sid, &fill));
            }
        }
        let slice = (now + Duration::from_millis(5)).min(next_frame).min(end);
        let debug = std::env::var_os("SKYROUTE_CAR_DEBUG").is_some() && strategy == Strategy::Fountain;
        w.run_sessions_until(slice, |w, node, ev| {
            if debug && node == car && matches!(ev, SessionEvent::PathUp { .. } | SessionEvent::PathDown { .. }) {
                let paths = car_sid.map(|sid| w.host(car).sessions().paths(sid)).unwrap_or_default();
                let names: Vec<String> = paths
                    .iter()
                    .map(|(id, st, _, hops)| {
                        let first = hops.first().and_then(|k| (0..w.nodes()).find(|i| w.key(*i) == *k)).unwrap_or(0);
                        format!("{id}:{st:?}@{first}")
                    })
                    .collect();
                eprintln!("{:.3} {ev:?} {names:?}", (w.now() - start).as_secs_f64());
            }
            match ev {
                SessionEvent::Accepted { session, .. } if node == server => server_sid = Some(session),
                SessionEvent::Datagram { data, .. } if node == server && data.len() == FRAME_LEN => {
                    let sent_ns = u64::from_be_bytes(data[8..16].try_into().unwrap_or([0; 8]));
                    let age = (w.now() - start).as_nanos() as u64 - sent_ns.min((w.now() - start).as_nanos() as u64);
                    if Duration::from_nanos(age) <= DEADLINE {
                        frames_in_time += 1;
                        let sec = ((sent_ns / 1_000_000_000) as usize).min(seconds - 1);
                        tl_frames[sec].1 += 1;
                    }
                }
                SessionEvent::Stream { data, .. } if node == car => {
                    bulk_bytes += data.len() as u64;
                    let sec = ((w.now() - start).as_secs() as usize).min(seconds - 1);
                    tl_bulk[sec] += data.len() as u64;
                }
                SessionEvent::Failed { session } => {
                    // The application saw its session fail: count it and open a new one.
                    breaks += 1;
                    let (b, r, f, o) = harvest(w, car_sid, server_sid);
                    route_bytes += b;
                    repair += r;
                    path_failures += f;
                    route_changes += o;
                    if node == car && Some(session) == car_sid {
                        car_sid = None;
                        connect_at = Some(w.now() - start);
                    }
                    if node == server && Some(session) == server_sid {
                        server_sid = None;
                    }
                }
                _ => {}
            }
            true
        });
        if w.now() < slice {
            // Nothing happened before the slice ended: move on.
            w.run_until(slice, |_, _, _| true);
        }
    }
    if std::env::var_os("SKYROUTE_CAR_DEBUG").is_some() {
        for (name, node, sid) in [("car", car, car_sid), ("server", server, server_sid)] {
            if let Some(st) = sid.and_then(|id| w.host(node).sessions().stats(id)) {
                eprintln!("{strategy:?} {name} {st:?}");
            }
        }
        let per10: Vec<u64> = tl_bulk.chunks(10).map(|c| c.iter().sum::<u64>() / 10_000).collect();
        eprintln!("{strategy:?} bulk KB/s per 10 s: {per10:?}");
    }
    let (b, r, f, o) = harvest(&w, car_sid, server_sid);
    route_bytes += b;
    repair += r;
    path_failures += f;
    route_changes += o;
    if std::env::var_os("SKYROUTE_CAR_DEBUG").is_some() {
        eprintln!("wifi windows {:?}\nlte down {:?}", sched.wifi, sched.lte_down);
        for (sec, (sent, ok)) in tl_frames.iter().enumerate() {
            if *sent > 0 && (*ok as f64) < 0.95 * *sent as f64 {
                let wifi_in: Vec<usize> = (0..WIFI)
                    .filter(|i| {
                        sched.wifi[*i]
                            .iter()
                            .any(|(a, b)| a.as_secs_f64() <= sec as f64 + 0.5 && b.as_secs_f64() > sec as f64 + 0.5)
                    })
                    .collect();
                let lte_down = sched
                    .lte_down
                    .iter()
                    .any(|(a, b)| a.as_secs_f64() <= sec as f64 + 1.0 && b.as_secs_f64() > sec as f64);
                eprintln!("{strategy:?} sec {sec}: {ok}/{sent} wifi {wifi_in:?} lte_down {lte_down}");
            }
        }
    }
    let voice_bytes = frame_seq * FRAME_LEN as u64;
    let app = bulk_bytes + voice_bytes;
    let timeline = (0..seconds)
        .map(|s| {
            let (sent, ok) = tl_frames[s];
            (if sent == 0 { 1.0 } else { ok as f64 / sent as f64 }, tl_bulk[s] as f64)
        })
        .collect();
    StrategyReport {
        session_breaks: breaks,
        deadline_met: if frame_seq == 0 { 0.0 } else { frames_in_time as f64 / frame_seq as f64 },
        bulk_goodput_bytes_per_s: bulk_bytes as f64 / duration.as_secs_f64(),
        overhead: if app == 0 { 0.0 } else { route_bytes as f64 / app as f64 },
        // The first k routes are not changes.
        route_changes: route_changes.saturating_sub(if strategy == Strategy::SingleRoute { 1 } else { 3 }),
        frames_sent: frame_seq,
        frames_in_time,
        bulk_bytes,
        repair_symbols: repair,
        path_failures,
        timeline,
    }
}

pub fn moving_car(seed: u64, duration: Duration, mut progress: impl FnMut(&str)) -> CarReport {
    let wall = Instant::now(); // test-only clock: wall time the scenario reports
    let mut run = |name: &str, s: Strategy| {
        progress(name);
        run_strategy(seed, duration, s)
    };
    let skyroute = run("skyroute", Strategy::Fountain);
    let single_route = run("single_route", Strategy::SingleRoute);
    let min_rtt = run("min_rtt", Strategy::MinRtt);
    let duplicate_all = run("duplicate_all", Strategy::DuplicateAll);
    CarReport {
        scenario: "moving-car",
        seed,
        duration_s: duration.as_secs_f64(),
        strategies: Strategies { skyroute, single_route, min_rtt, duplicate_all },
        wall_s: wall.elapsed().as_secs_f64(),
    }
}
