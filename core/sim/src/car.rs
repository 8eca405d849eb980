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

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use skyroute_proto::{NodeConfig, SessionConfig, SessionEvent, SessionId, Strategy};

use super::trace::{Trace, OPPORTUNITY_BYTES};
use super::{WireSpec, World};

const WIFI: usize = 8;
const FRAME_INTERVAL: Duration = Duration::from_millis(20);
const FRAME_LEN: usize = 160;
const DEADLINE: Duration = Duration::from_millis(150);
/// Model wires' latencies (see [`build`]): car to WiFi node, WiFi node to backbone, backbone
/// to server, LTE node to backbone.
const WIFI_MS: u64 = 3;
const AP_MS: u64 = 4;
const BACKBONE_MS: u64 = 8;
const LTE_CORE_MS: u64 = 10;
const WIFI_BYTES_PER_S: u64 = 1_000_000;
const LTE_BYTES_PER_S: u64 = 500_000;
const LTE_LOSS: f64 = 0.01;
/// How fast the car's modem and the LTE side hand datagrams to a traced link's queue.
const LTE_ACCESS_BYTES_PER_S: u64 = 12_500_000;
/// First frame, and the stall-measuring bin.
const FIRST_FRAME: Duration = Duration::from_millis(500);
const STALL_BIN: Duration = Duration::from_millis(250);

/// What the car's LTE link is: the scenario's model (flaps, 500 KB/s), or recorded traces.
#[derive(Debug, Clone, Default)]
pub struct Drive {
    /// Downlink capacity (and uplink too when `lte_uplink_trace` is none).
    pub lte_trace: Option<Arc<Trace>>,
    /// Uplink capacity.
    pub lte_uplink_trace: Option<Arc<Trace>>,
    /// Depth of the traced link's queues in packets [default: 1000, about 1.5 MB: cellular
    /// networks buffer deeply (the traces' own paper measured seconds of queueing), and
    /// Mahimahi's default queue has no limit at all].
    pub queue_packets: Option<usize>,
}

impl Drive {
    /// The uplink (car to LTE) and downlink traces, if any.
    fn traces(&self) -> Option<[Arc<Trace>; 2]> {
        let down = self.lte_trace.clone()?;
        let up = self.lte_uplink_trace.clone().unwrap_or_else(|| down.clone());
        Some([up, down])
    }

    fn queue(&self) -> usize {
        self.queue_packets.unwrap_or(1000)
    }
}

/// The world's schedule, drawn from the seed before any strategy runs: identical for all.
#[derive(Debug, Clone)]
struct Schedule {
    /// Per WiFi node: in-range windows (from, to) since the start.
    wifi: Vec<Vec<(Duration, Duration)>>,
    wifi_loss: Vec<f64>,
    /// LTE down windows, and (from, latency) changes.
    lte_down: Vec<(Duration, Duration)>,
    lte_latency: Vec<(Duration, Duration)>,
    /// Where the LTE link carried nothing for a second or more: the model's down windows, or
    /// a trace's recorded outages (either way the car redials when one ends).
    lte_outages: Vec<(Duration, Duration)>,
}

impl Schedule {
    fn wifi_in_range(&self, i: usize, t: Duration) -> bool {
        self.wifi[i].iter().any(|(a, b)| *a <= t && t < *b)
    }

    fn lte_latency_at(&self, t: Duration) -> Duration {
        self.lte_latency.iter().take_while(|(from, _)| *from <= t).last().map_or(Duration::from_millis(25), |x| x.1)
    }

    fn lte_down_at(&self, t: Duration) -> bool {
        self.lte_down.iter().any(|(a, b)| *a <= t && t < *b)
    }
}

fn schedule(seed: u64, duration: Duration, drive: &Drive) -> Schedule {
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
    // A recorded drive has its own outages: the trace's capacity replaces the model's flaps.
    let (lte_down, lte_outages) = match drive.traces() {
        Some([_, down]) => (Vec::new(), down.outages(Duration::from_secs(1), duration)),
        None => (lte_down.clone(), lte_down),
    };
    Schedule { wifi, wifi_loss, lte_down, lte_latency, lte_outages }
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

/// One strategy's figures.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyReport {
    pub session_breaks: u64,
    pub deadline_met: f64,
    /// `deadline_met` / the oracle's.
    pub deadline_met_of_oracle: f64,
    pub bulk_goodput_bytes_per_s: f64,
    /// Bulk goodput / the oracle's bulk capacity.
    pub bulk_of_oracle: f64,
    /// The 99th percentile of frame latency over every frame sent, a frame that never
    /// arrived counting as infinitely late (`null` in JSON when more than 1% never did).
    pub p99_frame_latency_ms: f64,
    /// Time the bulk stream delivered nothing (in 250 ms bins, from its first byte) while
    /// some route could carry.
    pub stall_s: f64,
    pub overhead: f64,
    pub route_changes: u64,
    pub frames_sent: u64,
    pub frames_in_time: u64,
    pub bulk_bytes: u64,
    pub repair_symbols: u64,
    pub path_failures: u64,
    /// Stream symbols reinjected onto other routes after a retransmission timeout
    /// (mptcp_like; 0 for the others).
    pub reinjected: u64,
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
    pub mptcp_like: StrategyReport,
}

/// What an all-knowing sender could have done in the same world.
#[derive(Debug, Clone, Serialize)]
pub struct Oracle {
    /// Fraction of the frame slots (every 20 ms from 0.5 s) at which some route was up and
    /// fast enough that a frame sent then would have arrived within its deadline.
    pub deadline_met: f64,
    /// Per instant, the sum over the routes to the car of their bottleneck's capacity (after
    /// the link's loss), averaged over the run: what bulk could have received.
    pub bulk_bytes_per_s: f64,
    /// Frame slots (one every 20 ms from 0.5 s).
    pub frame_slots: u64,
    /// Frame slots at which a frame could have met its deadline.
    pub frames_possible: u64,
    /// Bulk bytes the routes could have carried over the run.
    pub bulk_bytes: f64,
    /// Per second: fraction of frames possible, and bulk bytes possible.
    #[serde(skip)]
    pub timeline: Vec<(f64, f64)>,
    /// Per 250 ms bin: bulk bytes possible.
    #[serde(skip)]
    pub bins: Vec<f64>,
}

/// What the plot marks, in seconds from the start: when LTE carried nothing for a second or
/// more, and when no WiFi node was in range.
#[derive(Debug, Clone, Default)]
pub struct Marks {
    pub lte_down: Vec<(f64, f64)>,
    pub no_wifi: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CarReport {
    pub scenario: &'static str,
    pub seed: u64,
    pub duration_s: f64,
    /// The LTE downlink trace's file name, or `null` for the scenario's model.
    pub lte_trace: Option<String>,
    pub lte_uplink_trace: Option<String>,
    pub oracle: Oracle,
    pub strategies: Strategies,
    pub wall_s: f64,
    #[serde(skip)]
    pub marks: Marks,
}

impl CarReport {
    pub fn all(&self) -> [(&'static str, &StrategyReport); 5] {
        let s = &self.strategies;
        [
            ("skyroute", &s.skyroute),
            ("single_route", &s.single_route),
            ("min_rtt", &s.min_rtt),
            ("duplicate_all", &s.duplicate_all),
            ("mptcp_like", &s.mptcp_like),
        ]
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "moving car, seed {}, {:.0} simulated s ({:.1} s wall), LTE {}\n",
            self.seed,
            self.duration_s,
            self.wall_s,
            self.lte_trace.as_deref().unwrap_or("model")
        );
        out += &format!(
            "oracle: deadline_met {:.4}, bulk {:.1} KB/s\n",
            self.oracle.deadline_met,
            self.oracle.bulk_bytes_per_s / 1000.0
        );
        out += &format!(
            "{:<14} {:>6} {:>9} {:>7} {:>8} {:>8} {:>8} {:>7} {:>9} {:>8}\n",
            "strategy",
            "breaks",
            "deadline",
            "/oracle",
            "p99 ms",
            "bulk KB/s",
            "/oracle",
            "stall s",
            "overhead",
            "changes"
        );
        for (name, r) in self.all() {
            out += &format!(
                "{:<14} {:>6} {:>9.4} {:>7.4} {:>8.1} {:>8.1} {:>8.3} {:>7.2} {:>9.3} {:>8}\n",
                name,
                r.session_breaks,
                r.deadline_met,
                r.deadline_met_of_oracle,
                r.p99_frame_latency_ms,
                r.bulk_goodput_bytes_per_s / 1000.0,
                r.bulk_of_oracle,
                r.stall_s,
                r.overhead,
                r.route_changes
            );
        }
        out
    }
}

/// The oracle: from the world's schedule alone (no protocol runs), what could have been
/// delivered. A frame sent at `t` could arrive in time over a WiFi node in range at `t` (its
/// route's latency is fixed and well inside the deadline), or over LTE when the LTE link is
/// up and its latency then (plus, on a trace, the wait for the next delivery opportunity with
/// the queue empty) leaves it within the deadline. Loss is not held against the oracle (an
/// all-knowing sender puts its frame where it will not be lost). Bulk capacity is the sum of
/// the radio links' capacity times (1 - loss): the backbone behind them is never the
/// bottleneck, and the voice flow goes the other way (the wires are full duplex).
pub fn oracle(seed: u64, duration: Duration, drive: &Drive) -> Oracle {
    let sched = schedule(seed, duration, drive);
    oracle_of(&sched, duration, drive)
}

fn oracle_of(sched: &Schedule, duration: Duration, drive: &Drive) -> Oracle {
    let traces = drive.traces();
    let seconds = duration.as_secs() as usize + 1;
    let mut tl_frames = vec![(0u64, 0u64); seconds];
    let (mut slots, mut possible) = (0u64, 0u64);
    let mut t = FIRST_FRAME;
    let fixed = Duration::from_millis(LTE_CORE_MS + BACKBONE_MS);
    while t < duration {
        let wifi = (0..WIFI).any(|i| sched.wifi_in_range(i, t));
        let lte = !sched.lte_down_at(t) && {
            let leave = match &traces {
                // The first opportunity at or after `t`.
                Some([up, _]) => Duration::from_millis(up.next_at(t.as_millis() as u64)),
                None => t,
            };
            leave + sched.lte_latency_at(t) + fixed <= t + DEADLINE
        };
        let sec = (t.as_secs() as usize).min(seconds - 1);
        slots += 1;
        tl_frames[sec].0 += 1;
        if wifi || lte {
            possible += 1;
            tl_frames[sec].1 += 1;
        }
        t += FRAME_INTERVAL;
    }
    // Bulk: per 10 ms.
    let step = Duration::from_millis(10);
    let bins_n = (duration.as_secs_f64() / STALL_BIN.as_secs_f64()).ceil() as usize;
    let mut bins = vec![0.0; bins_n.max(1)];
    let mut tl_bulk = vec![0.0; seconds];
    let mut total = 0.0;
    let mut t = Duration::ZERO;
    while t < duration {
        let end = (t + step).min(duration);
        let overlap = |a: Duration, b: Duration| end.min(b).saturating_sub(t.max(a)).as_secs_f64();
        let mut bytes = 0.0;
        for i in 0..WIFI {
            let inside: f64 = sched.wifi[i].iter().map(|(a, b)| overlap(*a, *b)).sum();
            bytes += inside * WIFI_BYTES_PER_S as f64 * (1.0 - sched.wifi_loss[i]);
        }
        bytes += (1.0 - LTE_LOSS)
            * match &traces {
                Some([_, down]) => {
                    down.count(t.as_millis() as u64, end.as_millis() as u64) as f64 * OPPORTUNITY_BYTES as f64
                }
                None => {
                    let down: f64 = sched.lte_down.iter().map(|(a, b)| overlap(*a, *b)).sum();
                    ((end - t).as_secs_f64() - down) * LTE_BYTES_PER_S as f64
                }
            };
        total += bytes;
        tl_bulk[(t.as_secs() as usize).min(seconds - 1)] += bytes;
        let bin = ((t.as_secs_f64() / STALL_BIN.as_secs_f64()) as usize).min(bins.len() - 1);
        bins[bin] += bytes;
        t = end;
    }
    let timeline = tl_frames
        .iter()
        .zip(&tl_bulk)
        .map(|((n, ok), b)| (if *n == 0 { 1.0 } else { *ok as f64 / *n as f64 }, *b))
        .collect();
    Oracle {
        deadline_met: if slots == 0 { 0.0 } else { possible as f64 / slots as f64 },
        bulk_bytes_per_s: total / duration.as_secs_f64(),
        frame_slots: slots,
        frames_possible: possible,
        bulk_bytes: total,
        timeline,
        bins,
    }
}

/// Stretches of `0..end` covered by none of `windows`.
fn uncovered(windows: &[Vec<(Duration, Duration)>], end: Duration) -> Vec<(f64, f64)> {
    let mut all: Vec<(Duration, Duration)> = windows.iter().flatten().copied().collect();
    all.sort();
    gaps(&all, end)
        .into_iter()
        .filter(|(a, _)| *a < end)
        .map(|(a, b)| (a.as_secs_f64(), b.min(end).as_secs_f64()))
        .filter(|(a, b)| b > a)
        .collect()
}

/// The 99th percentile of `latencies` (`None`: never arrived), in ms; infinite when more than
/// 1% never arrived.
fn p99_ms(latencies: &[Option<Duration>]) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    let mut v: Vec<f64> = latencies.iter().map(|l| l.map_or(f64::INFINITY, |d| d.as_secs_f64() * 1000.0)).collect();
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// Time the bulk stream delivered nothing while the oracle says some route could carry, in
/// `STALL_BIN`s from the stream's first byte.
fn stall_s(bins: &[u64], oracle: &Oracle) -> f64 {
    let Some(first) = bins.iter().position(|b| *b > 0) else { return 0.0 };
    let stalled = bins.iter().zip(&oracle.bins).skip(first).filter(|(got, could)| **got == 0 && **could > 0.0).count();
    stalled as f64 * STALL_BIN.as_secs_f64()
}

/// Builds the world: returns it and the indexes (car, server).
fn build(
    seed: u64,
    duration: Duration,
    sched: &Schedule,
    cfg: &SessionConfig,
    drive: &Drive,
) -> (World, usize, usize, Vec<usize>) {
    let mut w = World::new(seed);
    // Every node keeps a congestion window on its links: the traced LTE link has a drop-tail
    // queue in the middle, which a sender without one fills until it drops.
    let mut nc = NodeConfig::default();
    nc.forward.congestion_window = true;
    let car = w.add_node(nc.clone());
    let server = w.add_node(nc.clone());
    let backbone: Vec<usize> = (0..4).map(|_| w.add_node(nc.clone())).collect();
    let wifi: Vec<usize> = (0..WIFI).map(|_| w.add_node(nc.clone())).collect();
    let lte = w.add_node(nc.clone());
    let wired = WireSpec { latency: Duration::from_millis(BACKBONE_MS), bandwidth: 6_250_000, ..WireSpec::default() };
    for &b in &backbone {
        w.add_wire(b, server, wired.clone());
        w.connect(b, server);
    }
    for (i, &ap) in wifi.iter().enumerate() {
        let b = backbone[i % 3];
        w.add_wire(ap, b, WireSpec { latency: Duration::from_millis(AP_MS), ..wired.clone() });
        w.connect(ap, b);
        let spec = WireSpec {
            latency: Duration::from_millis(WIFI_MS),
            bandwidth: WIFI_BYTES_PER_S,
            loss: sched.wifi_loss[i],
            down: gaps(&sched.wifi[i], duration),
            ..WireSpec::default()
        };
        w.add_wire(car, ap, spec);
    }
    w.add_wire(lte, backbone[3], WireSpec { latency: Duration::from_millis(LTE_CORE_MS), ..wired.clone() });
    w.connect(lte, backbone[3]);
    let mut spec = WireSpec {
        latency: sched.lte_latency[0].1,
        bandwidth: LTE_BYTES_PER_S,
        loss: LTE_LOSS,
        down: sched.lte_down.clone(),
        ..WireSpec::default()
    };
    if let Some([up, down]) = drive.traces() {
        // The car is the lower-numbered node: its direction is the first.
        spec.trace = [Some(up), Some(down)];
        spec.bandwidth = LTE_ACCESS_BYTES_PER_S;
        spec.queue_packets = drive.queue();
    }
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
pub fn run_strategy(seed: u64, duration: Duration, strategy: Strategy, drive: &Drive) -> StrategyReport {
    let sched = schedule(seed, duration, drive);
    let cfg = SessionConfig {
        strategy,
        session_timeout: Duration::from_secs(5),
        path_window: 96 << 10,
        ..SessionConfig::default()
    };
    let (mut w, car, server, access) = build(seed, duration, &sched, &cfg, drive);
    // MPTCP carries a voice flow as data on its byte stream: frames go into the car's stream
    // (in order, reliable) rather than as datagrams with a deadline.
    let voice_on_stream = strategy == Strategy::MptcpLike;
    let mut voice_rx: Vec<u8> = Vec::new();
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
    for (_, b) in &sched.lte_outages {
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
    let mut stall_bins = vec![0u64; (duration.as_secs_f64() / STALL_BIN.as_secs_f64()).ceil().max(1.0) as usize];
    let mut latencies: Vec<Option<Duration>> = Vec::new();
    let mut reinjected = 0u64;
    let mut route_bytes = 0u64;
    let mut repair = 0u64;
    let mut path_failures = 0u64;
    let mut route_changes = 0u64;
    let fill = vec![0x5au8; 64 << 10];
    let mut next_frame = start + FIRST_FRAME;
    let end = start + duration;
    let harvest = |w: &World, car_sid: Option<SessionId>, server_sid: Option<SessionId>| {
        let mut bytes = 0;
        let mut rep = 0;
        let mut fails = 0;
        let mut opened = 0;
        let mut reinjected = 0;
        if let Some(s) = car_sid.and_then(|id| w.host(car).sessions().stats(id)) {
            bytes += s.route_bytes_sent;
            rep += s.repair_sent;
            fails += s.path_failures + s.path_suspects;
            opened += s.paths_opened;
            reinjected += s.reinjected;
        }
        if let Some(s) = server_sid.and_then(|id| w.host(server).sessions().stats(id)) {
            bytes += s.route_bytes_sent;
            rep += s.repair_sent;
            reinjected += s.reinjected;
        }
        (bytes, rep, fails, opened, reinjected)
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
                if voice_on_stream {
                    // An application writing to a full socket buffer loses the frame.
                    if w.host(car).sessions().stream_room(sid) >= FRAME_LEN {
                        let _ = w.act_host(car, |h, now| h.stream_write(now, sid, &frame));
                    }
                } else {
                    let _ = w.act_host(car, |h, now| h.send_datagram(now, sid, &frame, DEADLINE));
                }
                latencies.push(None);
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
            // A voice frame reached the server: its sequence number and send time are inside.
            let mut frame_arrived = |frame: &[u8], now_ns: u64| {
                let seq = u64::from_be_bytes(frame[..8].try_into().unwrap_or([0; 8]));
                let sent_ns = u64::from_be_bytes(frame[8..16].try_into().unwrap_or([0; 8]));
                let age = Duration::from_nanos(now_ns.saturating_sub(sent_ns));
                if let Some(l @ None) = latencies.get_mut(seq as usize) {
                    *l = Some(age);
                    if age <= DEADLINE {
                        frames_in_time += 1;
                        let sec = ((sent_ns / 1_000_000_000) as usize).min(seconds - 1);
                        tl_frames[sec].1 += 1;
                    }
                }
            };
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
                    frame_arrived(&data, (w.now() - start).as_nanos() as u64);
                }
                SessionEvent::Stream { data, .. } if node == server && voice_on_stream => {
                    voice_rx.extend_from_slice(&data);
                    let whole = voice_rx.len() - voice_rx.len() % FRAME_LEN;
                    for frame in voice_rx[..whole].chunks(FRAME_LEN) {
                        frame_arrived(frame, (w.now() - start).as_nanos() as u64);
                    }
                    voice_rx.drain(..whole);
                }
                SessionEvent::Stream { data, .. } if node == car => {
                    bulk_bytes += data.len() as u64;
                    let since = w.now() - start;
                    tl_bulk[(since.as_secs() as usize).min(seconds - 1)] += data.len() as u64;
                    let last = stall_bins.len() - 1;
                    let bin = (since.as_secs_f64() / STALL_BIN.as_secs_f64()) as usize;
                    stall_bins[bin.min(last)] += data.len() as u64;
                }
                SessionEvent::Failed { session } => {
                    // The application saw its session fail: count it and open a new one.
                    breaks += 1;
                    let (b, r, f, o, re) = harvest(w, car_sid, server_sid);
                    route_bytes += b;
                    repair += r;
                    path_failures += f;
                    route_changes += o;
                    reinjected += re;
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
        for (i, &ap) in access.iter().enumerate() {
            let (down, up) = w.wire_bytes(ap, car);
            eprintln!("{strategy:?} access {i}: {down} bytes to the car, {up} from it");
        }
        eprintln!("{strategy:?} wires {:?}", w.wire_stats);
        let empty: Vec<String> = stall_bins
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == 0)
            .map(|(i, _)| format!("{:.2}", i as f64 * 0.25))
            .collect();
        eprintln!("{strategy:?} 250 ms bins with no bulk byte, from (s): {}", empty.join(" "));
        for (name, node, sid) in [("car", car, car_sid), ("server", server, server_sid)] {
            if let Some(st) = sid.and_then(|id| w.host(node).sessions().stats(id)) {
                eprintln!("{strategy:?} {name} {st:?}");
            }
        }
        let per10: Vec<u64> = tl_bulk.chunks(10).map(|c| c.iter().sum::<u64>() / 10_000).collect();
        eprintln!("{strategy:?} bulk KB/s per 10 s: {per10:?}");
    }
    let (b, r, f, o, re) = harvest(&w, car_sid, server_sid);
    route_bytes += b;
    repair += r;
    path_failures += f;
    route_changes += o;
    reinjected += re;
    if std::env::var_os("SKYROUTE_CAR_DEBUG").is_some() {
        eprintln!("wifi windows {:?}\nlte down {:?}", sched.wifi, sched.lte_down);
        for (sec, (sent, ok)) in tl_frames.iter().enumerate() {
            if *sent > 0 && (*ok as f64) < 0.95 * *sent as f64 {
                let mid = Duration::from_secs_f64(sec as f64 + 0.5);
                let wifi_in: Vec<usize> = (0..WIFI).filter(|i| sched.wifi_in_range(*i, mid)).collect();
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
    let oracle = oracle_of(&sched, duration, drive);
    let deadline_met = if frame_seq == 0 { 0.0 } else { frames_in_time as f64 / frame_seq as f64 };
    let bulk_goodput = bulk_bytes as f64 / duration.as_secs_f64();
    let of = |x: f64, o: f64| if o > 0.0 { x / o } else { 0.0 };
    StrategyReport {
        session_breaks: breaks,
        deadline_met,
        deadline_met_of_oracle: of(deadline_met, oracle.deadline_met),
        bulk_goodput_bytes_per_s: bulk_goodput,
        bulk_of_oracle: of(bulk_goodput, oracle.bulk_bytes_per_s),
        p99_frame_latency_ms: p99_ms(&latencies),
        stall_s: stall_s(&stall_bins, &oracle),
        overhead: if app == 0 { 0.0 } else { route_bytes as f64 / app as f64 },
        // The first k routes are not changes.
        route_changes: route_changes.saturating_sub(if strategy == Strategy::SingleRoute { 1 } else { 3 }),
        frames_sent: frame_seq,
        frames_in_time,
        bulk_bytes,
        repair_symbols: repair,
        path_failures,
        reinjected,
        timeline,
    }
}

/// Runs the scenario under every strategy, and its oracle.
pub fn moving_car(seed: u64, duration: Duration, drive: &Drive, mut progress: impl FnMut(&str)) -> CarReport {
    let wall = Instant::now(); // test-only clock: wall time the scenario reports
    let mut run = |name: &str, s: Strategy| {
        progress(name);
        run_strategy(seed, duration, s, drive)
    };
    let skyroute = run("skyroute", Strategy::Fountain);
    let single_route = run("single_route", Strategy::SingleRoute);
    let min_rtt = run("min_rtt", Strategy::MinRtt);
    let duplicate_all = run("duplicate_all", Strategy::DuplicateAll);
    let mptcp_like = run("mptcp_like", Strategy::MptcpLike);
    let sched = schedule(seed, duration, drive);
    let marks = Marks {
        lte_down: sched.lte_outages.iter().map(|(a, b)| (a.as_secs_f64(), b.min(&duration).as_secs_f64())).collect(),
        no_wifi: uncovered(&sched.wifi, duration),
    };
    CarReport {
        scenario: "moving-car",
        seed,
        duration_s: duration.as_secs_f64(),
        lte_trace: drive.lte_trace.as_ref().map(|t| t.name.clone()),
        lte_uplink_trace: drive.lte_uplink_trace.as_ref().map(|t| t.name.clone()),
        oracle: oracle_of(&sched, duration, drive),
        strategies: Strategies { skyroute, single_route, min_rtt, duplicate_all, mptcp_like },
        wall_s: wall.elapsed().as_secs_f64(),
        marks,
    }
}
