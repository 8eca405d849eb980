//! `asymmetric` (seed: "asymmetric connectivity"): a strong transmitter A reaches B over a
//! fast wire that carries nothing back (a directional beam, LiFi); B's way back to A is a slow
//! two-hop path through C. B opens a return route B -> C -> A and marks its link to A
//! asymmetric: its handshake answers, acks, credit and route control to A ride that route. A
//! then sends bulk data to B over a one-hop route on the fast wire; the report gives the
//! goodput against the fast wire's capacity (goal >= 0.8) for a clean and a lossy fast wire.

use std::time::{Duration, Instant};

use serde::Serialize;
use skyroute_proto::{Event, NodeConfig};

use super::scenario::{open_route, payload, table, transfer};
use super::{WireSpec, World};

/// One run: the fast wire losing `loss`.
#[derive(Debug, Clone, Serialize)]
pub struct AsymmetricRun {
    pub fast_loss: f64,
    pub bytes: u64,
    pub intact: bool,
    pub goodput_bytes_per_s: f64,
    /// Goodput over the fast wire's capacity.
    pub goodput_ratio: f64,
    /// Bytes B sent on the way back (its wire to C), per byte delivered.
    pub return_bytes_per_byte: f64,
    pub transfer_ms: f64,
    /// Goodput of the same transfer over the same wire carrying acks both ways (a symmetric
    /// link), as a fraction of the wire's capacity, and the asymmetric run's against it.
    pub symmetric_goodput_ratio: f64,
    pub vs_symmetric: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AsymmetricReport {
    pub scenario: &'static str,
    pub seed: u64,
    /// Fast one-way wire and each wire of the slow way back (bytes/s and ms).
    pub fast_bytes_per_s: u64,
    pub fast_latency_ms: f64,
    pub return_bytes_per_s: u64,
    pub return_latency_ms: f64,
    pub runs: Vec<AsymmetricRun>,
    /// The lowest goodput ratio of the runs.
    pub goodput_ratio: f64,
    pub wall_time_ms: f64,
}

const B: usize = 0;
const A: usize = 1;
const C: usize = 2;

fn config() -> NodeConfig {
    // Route buffers of a few RTTs of the fast wire (the way back makes the RTT ~90 ms).
    let mut config = NodeConfig::default();
    config.forward.route_buffer_bytes = 4 << 20;
    config
}

/// The baseline: the fast wire both ways, A -> B directly.
fn symmetric(seed: u64, bytes: usize, fast: &WireSpec) -> Result<f64, String> {
    let mut w = World::new(seed);
    let nodes = super::scenario::line(&mut w, 2, &config(), fast, Duration::from_secs(30)).ok_or("no link")?;
    let route = open_route(&mut w, nodes[0], &[nodes[1]], Duration::from_secs(30)).map_err(|e| e.to_string())?;
    let t = transfer(&mut w, nodes[0], nodes[1], route, payload(seed, bytes), Duration::from_secs(600));
    Ok(t.check.received as f64 / t.duration.as_secs_f64().max(1e-9) / fast.bandwidth as f64)
}

/// Builds the network, the return route and the asymmetric link, then runs the transfer.
fn run(seed: u64, bytes: usize, fast: &WireSpec, slow: &WireSpec) -> Result<AsymmetricRun, String> {
    let limit = Duration::from_secs(30);
    let mut w = World::new(seed);
    for _ in 0..3 {
        w.add_node(config());
    }
    // The fast wire carries only from the higher index (A) to the lower (B).
    w.add_wire(A, B, WireSpec { one_way: true, ..fast.clone() });
    w.add_wire(B, C, slow.clone());
    w.add_wire(C, A, slow.clone());
    w.connect(B, C);
    w.connect(C, A);
    let mut up = 0;
    let deadline = w.now() + limit;
    w.run_until(deadline, |_, _, e| {
        up += matches!(e, Event::LinkUp { .. }) as usize;
        up < 4
    });
    if up < 4 {
        return Err("the slow links did not come up".into());
    }
    let back = open_route(&mut w, B, &[C, A], limit).map_err(|e| format!("return route: {e}"))?;
    let a_key = w.key(A);
    w.act(B, |n, _| n.set_return_route(a_key, Some(back)));
    // A dials B on the fast wire; B answers over the return route.
    let b_key = w.key(B);
    w.act(A, |n, now| {
        n.connect(now, b_key, B);
    });
    let mut linked = false;
    let deadline = w.now() + limit;
    w.run_until(deadline, |_, node, e| {
        linked |= node == A && matches!(e, Event::LinkUp { peer, .. } if peer == b_key);
        !linked
    });
    if !linked {
        return Err("the asymmetric link did not come up".into());
    }
    let route = open_route(&mut w, A, &[B], limit).map_err(|e| format!("route over the fast wire: {e}"))?;
    let before = w.wire_bytes(B, C).0;
    let t = transfer(&mut w, A, B, route, payload(seed, bytes), Duration::from_secs(600));
    let back = w.wire_bytes(B, C).0 - before;
    let secs = t.duration.as_secs_f64().max(1e-9);
    let goodput = t.check.received as f64 / secs;
    let symmetric_goodput_ratio = symmetric(seed, bytes, fast)?;
    Ok(AsymmetricRun {
        symmetric_goodput_ratio,
        vs_symmetric: goodput / fast.bandwidth as f64 / symmetric_goodput_ratio.max(1e-9),
        fast_loss: fast.loss,
        bytes: bytes as u64,
        intact: t.check.intact(),
        goodput_bytes_per_s: goodput,
        goodput_ratio: goodput / fast.bandwidth as f64,
        return_bytes_per_byte: back as f64 / t.check.received.max(1) as f64,
        transfer_ms: secs * 1e3,
    })
}

/// The scenario: `bytes` over a 40 Mb/s one-way wire with a 1 Mb/s way back, clean and at
/// 5% loss on the fast wire.
pub fn asymmetric(seed: u64, bytes: usize) -> Result<AsymmetricReport, String> {
    let wall = Instant::now(); // test-only clock: wall time the scenario reports
    let fast = WireSpec { bandwidth: 5_000_000, latency: Duration::from_millis(5), ..WireSpec::default() };
    let slow = WireSpec { bandwidth: 125_000, latency: Duration::from_millis(40), ..WireSpec::default() };
    let mut runs = Vec::new();
    for loss in [0.0, 0.05] {
        runs.push(run(seed, bytes, &WireSpec { loss, ..fast.clone() }, &slow)?);
    }
    Ok(AsymmetricReport {
        scenario: "asymmetric",
        seed,
        fast_bytes_per_s: fast.bandwidth,
        fast_latency_ms: fast.latency.as_secs_f64() * 1e3,
        return_bytes_per_s: slow.bandwidth,
        return_latency_ms: 2.0 * slow.latency.as_secs_f64() * 1e3,
        goodput_ratio: runs.iter().map(|r| r.goodput_ratio).fold(f64::INFINITY, f64::min),
        runs,
        wall_time_ms: wall.elapsed().as_secs_f64() * 1e3,
    })
}

impl AsymmetricReport {
    pub fn table(&self) -> String {
        let rows = vec![
            ("scenario", self.scenario.to_string()),
            ("seed", self.seed.to_string()),
            ("fast one-way wire", format!("{} B/s, {} ms", self.fast_bytes_per_s, self.fast_latency_ms)),
            ("way back (2 hops)", format!("{} B/s, {} ms", self.return_bytes_per_s, self.return_latency_ms)),
        ];
        let runs: Vec<(String, String)> = self
            .runs
            .iter()
            .map(|r| {
                (
                    format!("fast wire loss {:.0}%", r.fast_loss * 100.0),
                    format!(
                        "goodput {:.3} of capacity ({:.3} symmetric), {} bytes {}, {:.4} B back per B",
                        r.goodput_ratio,
                        r.symmetric_goodput_ratio,
                        r.bytes,
                        if r.intact { "intact" } else { "CORRUPT" },
                        r.return_bytes_per_byte
                    ),
                )
            })
            .collect();
        let mut out = table(&rows);
        for (k, v) in runs {
            out += &table(&[(&k, v)]);
        }
        out += &table(&[("goodput ratio (lowest)", format!("{:.3} (goal >= 0.8)", self.goodput_ratio))]);
        out
    }
}
