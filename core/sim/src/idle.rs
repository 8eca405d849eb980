//! `skyroute sim idle`: what a phone pays for a tunnel it is not using. A phone with one
//! session over three disjoint routes (WiFi, LTE and a neighbour, each through two relays to a
//! server) sends for 30 s, idles for `--minutes`, then writes again; during the idle spell the
//! best route dies silently (a wire between its relays goes dark, nobody is told). Counted on
//! the phone while idle: datagrams and bytes it sends, timer wakeups (node and session timers,
//! one per distinct instant), key rotations (links and the session) and link handshakes; and
//! after it, the time from the first write to its delivery. The same run with the phone on one
//! direct link to the server (`direct_*`) shows what the relays and routes add.
//!
//! ```text
//!   phone ~~ wifi-ap -- r0 --\
//!   phone ~~ lte ----- r1 ---- server
//!   phone ~~ peer ---- r2 --/
//! ```

use std::time::{Duration, Instant};

use serde::Serialize;
use skyroute_proto::{NodeConfig, SessionConfig, SessionEvent, SessionId};

use super::scenario::payload;
use super::{WireSpec, World};

/// Traffic before the idle spell.
const ACTIVE: Duration = Duration::from_secs(30);
/// The idle counters start this long after the last write (last acks, the last rotation and
/// the old key's grace settle first).
const SETTLE: Duration = Duration::from_secs(5);
/// Written every 100 ms while active, and once after the idle spell.
const CHUNK: usize = 16 << 10;

/// One variant's figures (relayed routes, or the direct link).
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleFigures {
    pub idle_packets_per_min: f64,
    pub idle_bytes_per_min: f64,
    pub idle_wakeups_per_min: f64,
    /// Key rotations of the phone's links and its session while idle.
    pub idle_rekeys_per_min: f64,
    /// Fresh link handshakes while idle (a key past `key_max_age` that a keepalive needs).
    pub idle_handshakes_per_min: f64,
    /// From the first write after idle to its delivery at the server.
    pub resume_ms: f64,
    /// The best route's smoothed RTT before the idle spell.
    pub rtt_ms: f64,
    pub resume_intact: bool,
    pub session_breaks: u64,
    /// Paths the session had when it went idle, and live paths after the resume.
    pub paths_before: usize,
    pub paths_after: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub scenario: &'static str,
    pub seed: u64,
    pub minutes: f64,
    pub keepalive_s: u64,
    pub links: usize,
    /// The phone with three relayed routes (`session_breaks` counts both variants).
    #[serde(flatten)]
    pub routed: IdleFigures,
    pub direct_idle_packets_per_min: f64,
    pub direct_idle_bytes_per_min: f64,
    pub direct_idle_wakeups_per_min: f64,
    pub direct_idle_rekeys_per_min: f64,
    pub direct_idle_handshakes_per_min: f64,
    pub direct_resume_ms: f64,
    pub direct_rtt_ms: f64,
    pub direct_resume_intact: bool,
    pub wall_s: f64,
}

impl IdleReport {
    pub fn table(&self) -> String {
        let row = |name: &str, a: String, b: String| format!("{name:<24} {a:>12} {b:>12}\n");
        let f = |x: f64| format!("{x:.2}");
        let mut out = format!(
            "idle phone, seed {}, {} idle minutes, keepalive {} s, {} links ({:.1} s wall)\n",
            self.seed, self.minutes, self.keepalive_s, self.links, self.wall_s
        );
        out += &row("", "3 routes".into(), "direct".into());
        out += &row("packets / min", f(self.routed.idle_packets_per_min), f(self.direct_idle_packets_per_min));
        out += &row("bytes / min", f(self.routed.idle_bytes_per_min), f(self.direct_idle_bytes_per_min));
        out += &row("wakeups / min", f(self.routed.idle_wakeups_per_min), f(self.direct_idle_wakeups_per_min));
        out += &row("rekeys / min", f(self.routed.idle_rekeys_per_min), f(self.direct_idle_rekeys_per_min));
        out += &row("handshakes / min", f(self.routed.idle_handshakes_per_min), f(self.direct_idle_handshakes_per_min));
        out += &row("resume (ms)", f(self.routed.resume_ms), f(self.direct_resume_ms));
        out += &row("best RTT (ms)", f(self.routed.rtt_ms), f(self.direct_rtt_ms));
        out += &row("resume intact", self.routed.resume_intact.to_string(), self.direct_resume_intact.to_string());
        out += &format!(
            "session breaks {}, paths {} before idle, {} live after resume (one died silently)\n",
            self.routed.session_breaks, self.routed.paths_before, self.routed.paths_after
        );
        out
    }
}

/// Counters of the phone at one instant.
#[derive(Clone, Copy)]
struct Snapshot {
    at: Instant,
    packets: u64,
    bytes: u64,
    wakeups: u64,
    rekeys: u64,
    handshakes: u64,
}

fn snapshot(w: &World, phone: usize, sid: SessionId) -> Snapshot {
    let (packets, bytes) = w.sent_by(phone);
    let links = w.node(phone).links();
    let session_rekeys = w.host(phone).sessions().stats(sid).map_or(0, |s| s.rekeys);
    Snapshot {
        at: w.now(),
        packets,
        bytes,
        wakeups: w.wakeups(phone),
        rekeys: links.iter().map(|l| l.stats.rekeys).sum::<u64>() + session_rekeys,
        handshakes: links.iter().map(|l| l.stats.handshakes).sum(),
    }
}

/// Runs both variants and reports them side by side.
pub fn idle(seed: u64, minutes: f64, keepalive_s: u64) -> IdleReport {
    let wall = Instant::now(); // test-only clock: wall time the scenario reports
    let idle = Duration::from_secs_f64(minutes * 60.0);
    let routed = run(seed, idle, keepalive_s, false);
    let direct = run(seed, idle, keepalive_s, true);
    let session_breaks = routed.session_breaks + direct.session_breaks;
    IdleReport {
        scenario: "idle",
        seed,
        minutes,
        keepalive_s,
        links: 3,
        routed: IdleFigures { session_breaks, ..routed },
        direct_idle_packets_per_min: direct.idle_packets_per_min,
        direct_idle_bytes_per_min: direct.idle_bytes_per_min,
        direct_idle_wakeups_per_min: direct.idle_wakeups_per_min,
        direct_idle_rekeys_per_min: direct.idle_rekeys_per_min,
        direct_idle_handshakes_per_min: direct.idle_handshakes_per_min,
        direct_resume_ms: direct.resume_ms,
        direct_rtt_ms: direct.rtt_ms,
        direct_resume_intact: direct.resume_intact,
        wall_s: wall.elapsed().as_secs_f64(),
    }
}

/// One variant: `direct` puts the phone on one wire to the server (one route of one hop).
pub fn run(seed: u64, idle: Duration, keepalive_s: u64, direct: bool) -> IdleFigures {
    let mut w = World::new(seed);
    let mut phone_cfg = NodeConfig::default();
    phone_cfg.link.keepalive = (keepalive_s > 0).then(|| Duration::from_secs(keepalive_s));
    let phone = w.add_node(phone_cfg);
    let server = w.add_node(NodeConfig::default());
    let wired = WireSpec { latency: Duration::from_millis(5), bandwidth: 12_500_000, ..WireSpec::default() };
    // (radio latency, bandwidth) of WiFi, LTE and a neighbour's link.
    let radios = [(4, 2_500_000), (25, 1_250_000), (8, 1_250_000)];
    // The wire that goes dark during the idle spell: the best route's, between its relays.
    let mut doomed = None;
    let routes = if direct {
        w.add_wire(
            phone,
            server,
            WireSpec { latency: Duration::from_millis(4), bandwidth: 2_500_000, ..wired.clone() },
        );
        w.connect(phone, server);
        1
    } else {
        for (i, (ms, bw)) in radios.iter().enumerate() {
            let access = w.add_node(NodeConfig::default());
            let relay = w.add_node(NodeConfig::default());
            w.add_wire(
                phone,
                access,
                WireSpec { latency: Duration::from_millis(*ms), bandwidth: *bw, ..wired.clone() },
            );
            w.add_wire(access, relay, wired.clone());
            w.add_wire(relay, server, wired.clone());
            w.connect(phone, access);
            w.connect(access, relay);
            w.connect(relay, server);
            if i == 0 {
                doomed = Some((access, relay));
            }
        }
        3
    };
    let graph = w.discovered().graph();
    let cfg = SessionConfig { routes, ..SessionConfig::default() };
    w.add_sessions(phone, cfg.clone(), graph.clone());
    w.add_sessions(server, cfg, graph);
    let start = w.now();
    w.run_until(start + Duration::from_millis(200), |_, _, _| true);
    let server_key = w.key(server);
    let Ok(sid) = w.act_host(phone, |h, now| h.connect(now, server_key, None)) else {
        return IdleFigures::default();
    };

    let data = payload(seed, CHUNK * (ACTIVE.as_millis() as usize / 100) + CHUNK);
    let mut written = 0usize;
    let mut received: Vec<u8> = Vec::with_capacity(data.len());
    let mut breaks = 0u64;
    let mut on_event = |received: &mut Vec<u8>, node: usize, ev: SessionEvent| match ev {
        SessionEvent::Stream { data, .. } if node == server => received.extend_from_slice(&data),
        SessionEvent::Failed { .. } => breaks += 1,
        _ => {}
    };

    // Traffic: a chunk every 100 ms for 30 s, once the session is up.
    let active_from = w.now();
    let mut next = active_from;
    while w.now() < active_from + ACTIVE + Duration::from_secs(2) {
        if w.now() >= next {
            let established = w.host(phone).sessions().is_established(sid);
            if established && written + 2 * CHUNK <= data.len() && w.now() < active_from + ACTIVE {
                let chunk = &data[written..written + CHUNK];
                let n = w.act_host(phone, |h, now| h.stream_write(now, sid, chunk)).unwrap_or(0);
                written += n;
            }
            next += Duration::from_millis(100);
        }
        let until = next.min(active_from + ACTIVE + Duration::from_secs(2));
        w.run_sessions_until(until, |_, node, ev| {
            on_event(&mut received, node, ev);
            true
        });
    }
    let paths = w.host(phone).sessions().paths(sid);
    let rtt_ms = paths.iter().filter_map(|p| p.2).min().map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let paths_before = paths.len();

    // Idle: nothing written; a minute in, the best route dies silently.
    let idle_from = w.now();
    w.run_sessions_until(idle_from + SETTLE, |_, node, ev| {
        on_event(&mut received, node, ev);
        true
    });
    let a = snapshot(&w, phone, sid);
    let cut_at = idle_from + idle.min(Duration::from_secs(60));
    w.run_sessions_until(cut_at, |_, node, ev| {
        on_event(&mut received, node, ev);
        true
    });
    if let Some((x, y)) = doomed {
        let since = w.now() - start;
        if let Some(spec) = w.wire_mut(x, y) {
            spec.down.push((since, since + Duration::from_secs(365 * 86_400)));
        }
    }
    w.run_sessions_until(idle_from + idle, |_, node, ev| {
        on_event(&mut received, node, ev);
        true
    });
    let b = snapshot(&w, phone, sid);

    // Resume: one chunk, timed to its delivery.
    let resume_at = w.now();
    let chunk = data[written..written + CHUNK].to_vec();
    let n = w.act_host(phone, |h, now| h.stream_write(now, sid, &chunk)).unwrap_or(0);
    written += n;
    let mut delivered_at = None;
    let limit = resume_at + Duration::from_secs(30);
    while delivered_at.is_none() && w.now() < limit {
        let step_end = (w.now() + Duration::from_millis(1)).min(limit);
        w.run_sessions_until(step_end, |w, node, ev| {
            on_event(&mut received, node, ev);
            if received.len() >= written && delivered_at.is_none() {
                delivered_at = Some(w.now());
            }
            true
        });
    }
    // Let the session settle (the dead path found and replaced) before counting paths.
    w.run_sessions_until(w.now() + Duration::from_secs(5), |_, node, ev| {
        on_event(&mut received, node, ev);
        true
    });
    let paths_after =
        w.host(phone).sessions().paths(sid).iter().filter(|p| p.1 == skyroute_proto::PathState::Live).count();

    let mins = b.at.saturating_duration_since(a.at).as_secs_f64() / 60.0;
    let per_min = |x: u64, y: u64| if mins > 0.0 { y.saturating_sub(x) as f64 / mins } else { 0.0 };
    IdleFigures {
        idle_packets_per_min: per_min(a.packets, b.packets),
        idle_bytes_per_min: per_min(a.bytes, b.bytes),
        idle_wakeups_per_min: per_min(a.wakeups, b.wakeups),
        idle_rekeys_per_min: per_min(a.rekeys, b.rekeys),
        idle_handshakes_per_min: per_min(a.handshakes, b.handshakes),
        resume_ms: delivered_at.map_or(f64::INFINITY, |t| t.saturating_duration_since(resume_at).as_secs_f64() * 1e3),
        rtt_ms,
        resume_intact: received.len() == written && received[..] == data[..written],
        session_breaks: breaks,
        paths_before,
        paths_after,
    }
}
