//! Named scenarios for `skyroute sim`. Each builds a world from a seed, runs it, and returns a
//! report that prints as a table or as one JSON object.

use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use skyroute_proto::{Class, Dir, Event, LinkState, NodeConfig, RouteError, RouteEvent, RouteId};

use super::{WireSpec, World};

/// Deterministic payload of `len` bytes from `seed`.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = Sha256::digest(seed.to_be_bytes());
    while out.len() < len {
        out.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    out.truncate(len);
    out
}

/// Application side of a bulk transfer: queues chunks until the route says `QueueFull`, and
/// continues on `Writable` (the backpressure protocol of a route).
pub struct BulkSender {
    data: Vec<u8>,
    pos: usize,
    pub class: Class,
}

impl BulkSender {
    pub fn new(data: Vec<u8>, class: Class) -> Self {
        BulkSender { data, pos: 0, class }
    }

    /// Queues as much as the route takes now; returns bytes queued so far.
    pub fn pump(&mut self, w: &mut World, node: usize, route: RouteId) -> u64 {
        let chunk = w.node(node).route_mtu();
        let (data, pos, class) = (&self.data, &mut self.pos, self.class);
        w.act(node, |n, now| {
            while *pos < data.len() {
                let end = (*pos + chunk).min(data.len());
                match n.send(now, route, class, &data[*pos..end]) {
                    Ok(()) => *pos = end,
                    Err(RouteError::QueueFull) => break,
                    Err(_) => break,
                }
            }
        });
        self.pos as u64
    }

    pub fn done(&self) -> bool {
        self.pos == self.data.len()
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }
}

/// Receives a byte stream and checks it is exactly the expected one, in order.
pub struct StreamCheck {
    expected: Vec<u8>,
    pub received: u64,
    pub in_order: bool,
    hasher: Sha256,
}

impl StreamCheck {
    pub fn new(expected: Vec<u8>) -> Self {
        StreamCheck { expected, received: 0, in_order: true, hasher: Sha256::new() }
    }

    pub fn accept(&mut self, chunk: &[u8]) {
        let at = self.received as usize;
        if self.expected.get(at..at + chunk.len()) != Some(chunk) {
            self.in_order = false;
        }
        self.hasher.update(chunk);
        self.received += chunk.len() as u64;
    }

    pub fn complete(&self) -> bool {
        self.received as usize >= self.expected.len()
    }

    /// SHA-256 of what arrived equals that of what was sent, and it arrived in order.
    pub fn intact(&self) -> bool {
        self.in_order
            && self.received as usize == self.expected.len()
            && self.hasher.clone().finalize() == Sha256::digest(&self.expected)
    }
}

/// Builds a line of `n` nodes with one wire spec and waits until every link is up.
pub fn line(w: &mut World, n: usize, config: &NodeConfig, spec: &WireSpec, limit: Duration) -> Option<Vec<usize>> {
    let nodes: Vec<usize> = (0..n).map(|_| w.add_node(config.clone())).collect();
    for pair in nodes.windows(2) {
        w.add_wire(pair[0], pair[1], spec.clone());
        w.connect(pair[0], pair[1]);
    }
    // Up at both ends: a responder counts its link up one message before the initiator does,
    // and on a lossy wire that message may take many tries.
    let all_up = |w: &World| {
        let up: usize =
            nodes.iter().map(|&i| w.node(i).links().iter().filter(|l| l.state == LinkState::Up).count()).sum();
        up == 2 * (n - 1)
    };
    let deadline = w.now() + limit;
    w.run_until(deadline, |w, _, ev| !(matches!(ev, Event::LinkUp { .. }) && all_up(w)));
    all_up(w).then_some(nodes)
}

/// Opens a route from `src` through `hops` and runs until it is ready or failed.
pub fn open_route(w: &mut World, src: usize, hops: &[usize], limit: Duration) -> Result<RouteId, RouteError> {
    let keys: Vec<_> = hops.iter().map(|h| w.key(*h)).collect();
    let route = w.act(src, |n, now| n.open_route(now, None, &keys))?;
    let mut outcome = Err(RouteError::Timeout { joined: 0, total: hops.len() });
    let deadline = w.now() + limit;
    w.run_until(deadline, |_, node, e| match e {
        Event::Route(RouteEvent::Ready { route: r }) if node == src && r == route => {
            outcome = Ok(route);
            false
        }
        Event::Route(RouteEvent::Failed { route: r, error }) if node == src && r == route => {
            outcome = Err(error);
            false
        }
        _ => true,
    });
    outcome
}

/// Outcome of one bulk transfer over a route.
pub struct Transfer {
    pub sent: u64,
    pub check: StreamCheck,
    pub duration: Duration,
    pub delivered_confirmed: u64,
}

/// Sends `data` from `src` over `route` to `dst` (the last hop) and runs until all of it
/// arrived or `limit` passed.
pub fn transfer(w: &mut World, src: usize, dst: usize, route: RouteId, data: Vec<u8>, limit: Duration) -> Transfer {
    let start = w.now();
    let mut tx = BulkSender::new(data.clone(), Class::Bulk);
    let mut check = StreamCheck::new(data);
    let mut confirmed = 0;
    tx.pump(w, src, route);
    let deadline = w.now() + limit;
    w.run_until(deadline, |w, node, ev| {
        match ev {
            Event::Route(RouteEvent::Data { data, .. }) if node == dst => check.accept(&data),
            Event::Route(RouteEvent::Writable { route: r, .. }) if node == src && r == route => {
                tx.pump(w, src, route);
            }
            Event::Route(RouteEvent::Delivered { route: r, bytes, .. }) if node == src && r == route => {
                confirmed = bytes
            }
            _ => {}
        }
        !check.complete()
    });
    Transfer { sent: tx.pos as u64, check, duration: w.now() - start, delivered_confirmed: confirmed }
}

/// A line of `hops + 1` nodes, a route from the first to the last as route discovery finds
/// it (over all the others), and `data` sent through it. Returns how long the route took to build and the transfer's outcome (empty if
/// the links or the route never came up within `limit_s` simulated seconds each).
pub fn line_transfer(
    w: &mut World,
    hops: usize,
    config: &NodeConfig,
    spec: &WireSpec,
    data: Vec<u8>,
    limit_s: u64,
) -> (Duration, Transfer) {
    let limit = Duration::from_secs(limit_s);
    let nodes = line(w, hops + 1, config, spec, limit);
    let setup_start = w.now();
    let route = nodes
        .as_ref()
        .ok_or(RouteError::NoLink)
        .and_then(|n| Ok((n[0], discovered_route(w, n[0], n[hops])?)))
        .and_then(|(src, path)| open_route(w, src, &path, limit));
    let route_setup = w.now() - setup_start;
    let t = match route {
        Ok(route) => transfer(w, 0, hops, route, data, limit * 12),
        Err(_) => Transfer { sent: 0, check: StreamCheck::new(data), duration: Duration::ZERO, delivered_confirmed: 0 },
    };
    (route_setup, t)
}

/// The route from `src` to `dst` that route discovery finds: the cheapest path in the graph
/// of signed link announcements (see [`World::discovered`]), as node indices.
pub fn discovered_route(w: &World, src: usize, dst: usize) -> Result<Vec<usize>, RouteError> {
    use skyroute_proto::RouteFinder;
    let g = w.discovered().graph();
    let firsts: std::collections::BTreeSet<_> = g.neighbours(&w.key(src)).collect();
    let found = g.find(&w.key(src), &w.key(dst), 1, &firsts, &Default::default());
    let keys = found.into_iter().next().ok_or(RouteError::NoLink)?;
    let index: std::collections::BTreeMap<_, _> = (0..w.nodes()).map(|i| (w.key(i), i)).collect();
    keys.iter().map(|k| index.get(k).copied().ok_or(RouteError::InvalidHops)).collect()
}

/// Largest route buffer occupancy seen at any node, for any route.
pub fn max_buffer_bytes(w: &World) -> usize {
    (0..w.nodes())
        .flat_map(|i| {
            let n = w.node(i);
            n.route_ids().into_iter().flat_map(move |r| {
                [Dir::Fwd, Dir::Back]
                    .into_iter()
                    .flat_map(move |d| Class::ALL.into_iter().filter_map(move |c| n.flow_stats(r, d, c)))
            })
        })
        .map(|s| s.max_buffered)
        .max()
        .unwrap_or(0)
}

/// Result of the `eight-hop` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct EightHopReport {
    pub scenario: &'static str,
    pub seed: u64,
    pub hops: usize,
    pub bytes_sent: u64,
    pub bytes_delivered: u64,
    pub intact: bool,
    pub route_setup_ms: f64,
    pub sim_time_ms: f64,
    pub wall_time_ms: f64,
    pub goodput_bytes_per_s: f64,
    pub link_rekeys: u64,
    pub datagrams: u64,
    pub event_log_hash: String,
}

/// `eight-hop`: 9 nodes in a line; links handshake; the source telescopes a route over 8 hops
/// and sends `bytes` through it; the last node checks the SHA-256.
pub fn eight_hop(seed: u64, bytes: usize) -> EightHopReport {
    let wall = Instant::now(); // test-only clock: wall time the scenario reports
    let hops = 8;
    let mut w = World::new(seed);
    let (route_setup, t) =
        line_transfer(&mut w, hops, &NodeConfig::default(), &WireSpec::default(), payload(seed, bytes), 30);
    EightHopReport {
        scenario: "eight-hop",
        seed,
        hops,
        bytes_sent: t.sent,
        bytes_delivered: t.check.received,
        intact: t.check.intact(),
        route_setup_ms: route_setup.as_secs_f64() * 1e3,
        sim_time_ms: w.elapsed().as_secs_f64() * 1e3,
        wall_time_ms: wall.elapsed().as_secs_f64() * 1e3,
        goodput_bytes_per_s: t.check.received as f64 / t.duration.as_secs_f64().max(1e-9),
        link_rekeys: w.link_rekeys(),
        datagrams: w.wire_stats.delivered,
        event_log_hash: w.log_hash(),
    }
}

/// Prints `rows` as an aligned two-column table.
pub fn table(rows: &[(&str, String)]) -> String {
    rows.iter().map(|(k, v)| format!("{k:<30}{v}\n")).collect()
}

impl EightHopReport {
    pub fn table(&self) -> String {
        table(&[
            ("scenario", self.scenario.to_string()),
            ("seed", self.seed.to_string()),
            ("hops", self.hops.to_string()),
            ("bytes sent", self.bytes_sent.to_string()),
            ("bytes delivered", self.bytes_delivered.to_string()),
            ("intact (sha256, in order)", self.intact.to_string()),
            ("route setup", format!("{:.1} ms", self.route_setup_ms)),
            ("goodput", format!("{:.2} MB/s", self.goodput_bytes_per_s / 1e6)),
            ("link rekeys", self.link_rekeys.to_string()),
            ("datagrams delivered", self.datagrams.to_string()),
            ("simulated time", format!("{:.1} ms", self.sim_time_ms)),
            ("wall time", format!("{:.1} ms", self.wall_time_ms)),
            ("event log hash", self.event_log_hash[..16].to_string()),
        ])
    }
}

/// Result of the `eight-hop-loss` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct LossReport {
    pub scenario: &'static str,
    pub seed: u64,
    pub loss: f64,
    pub hops: usize,
    pub bytes: u64,
    pub intact: bool,
    /// Delivered payload rate / raw bandwidth of one link (0..1).
    pub goodput: f64,
    /// `goodput / (1 - loss)`: the share of what the lossy links leave (1 would be every
    /// surviving byte payload).
    pub goodput_of_limit: f64,
    /// The same network and seed with per-hop retransmission off, end-to-end retransmission only.
    pub baseline_e2e_goodput: f64,
    /// Largest buffer occupancy seen at any hop (bytes).
    pub max_buffer_bytes: usize,
    pub retransmitted_bytes: u64,
    pub route_setup_ms: f64,
    pub transfer_ms: f64,
    pub sim_time_ms: f64,
    pub wall_time_ms: f64,
}

/// Wires of the loss scenarios: 10 Mb/s, 5 ms.
pub fn lossy_spec(loss: f64) -> WireSpec {
    WireSpec { loss, ..WireSpec::default() }
}

/// Node settings of the loss scenarios (a fixed mesh allowed minutes to build a route).
pub fn lossy_config() -> NodeConfig {
    let mut c = NodeConfig::default();
    // Telescoping over 8 hops at 90% loss takes minutes of retransmissions.
    c.route.setup_timeout = Duration::from_secs(300);
    // A fixed mesh's neighbours are expected to be there: handshakes retry at 1 s at most
    // (a phone's default backs off to 8 s to spare its radio when a peer is gone).
    c.link.handshake_retry_max = Duration::from_secs(1);
    c
}

/// `eight-hop-loss`: 9 nodes in a line, every wire losing `loss` of its datagrams; the source
/// sends `bytes` over an 8-hop route with per-hop retransmission; then the same network and
/// seed with end-to-end retransmission only, measured over `baseline_secs`.
pub fn eight_hop_loss(seed: u64, loss: f64, bytes: usize, baseline_secs: u64) -> LossReport {
    let wall = Instant::now(); // test-only clock: wall time the scenario reports
    let hops = 8;
    let spec = lossy_spec(loss);
    let mut w = World::new(seed);
    let (route_setup, t) = line_transfer(&mut w, hops, &lossy_config(), &spec, payload(seed, bytes), 300);
    let retransmitted: u64 = (0..w.nodes())
        .flat_map(|i| {
            let n = w.node(i);
            n.route_ids().into_iter().filter_map(move |r| n.flow_stats(r, Dir::Fwd, Class::Bulk))
        })
        .map(|s| s.retransmitted_bytes)
        .sum();
    let goodput = t.check.received as f64 / t.duration.as_secs_f64().max(1e-9) / spec.bandwidth as f64;
    LossReport {
        scenario: "eight-hop-loss",
        seed,
        loss,
        hops,
        bytes: bytes as u64,
        intact: t.check.intact(),
        goodput,
        goodput_of_limit: goodput / (1.0 - loss).max(1e-9),
        baseline_e2e_goodput: e2e_baseline(seed, loss, hops, Duration::from_secs(baseline_secs)),
        max_buffer_bytes: max_buffer_bytes(&w),
        retransmitted_bytes: retransmitted,
        route_setup_ms: route_setup.as_secs_f64() * 1e3,
        transfer_ms: t.duration.as_secs_f64() * 1e3,
        sim_time_ms: w.elapsed().as_secs_f64() * 1e3,
        wall_time_ms: wall.elapsed().as_secs_f64() * 1e3,
    }
}

/// Goodput with end-to-end retransmission only: the route is built on a clean network, then
/// every wire loses `loss`, hops stop acknowledging and retransmitting, and the application
/// cycles through the chunks the destination has not confirmed (the destination reports a
/// bitmap of what it has every 10 ms over the equally lossy way back).
pub fn e2e_baseline(seed: u64, loss: f64, hops: usize, duration: Duration) -> f64 {
    let spec = lossy_spec(0.0);
    let mut w = World::new(seed);
    let Some(nodes) = line(&mut w, hops + 1, &lossy_config(), &spec, Duration::from_secs(30)) else { return 0.0 };
    let Ok(route) = open_route(&mut w, nodes[0], &nodes[1..], Duration::from_secs(30)) else { return 0.0 };
    let dst = hops;
    for pair in nodes.windows(2) {
        if let Some(s) = w.wire_mut(pair[0], pair[1]) {
            s.loss = loss;
        }
    }
    for &n in &nodes {
        w.act(n, |node, _| node.set_hop_reliability(false));
    }
    let chunk = w.node(0).route_mtu() - 4;
    // Enough chunks that the source never runs out of unconfirmed ones during the run.
    let total = 8 * 1024usize;
    let mut confirmed = vec![false; total];
    let mut have = vec![false; total];
    let mut unique = 0u64;
    let mut cursor = 0usize;
    let mut back_route = None;
    let start = w.now();
    let end = start + duration;
    let body = vec![0x5au8; chunk];
    let mut next_report = start;
    while w.now() < end {
        // Source: keep the route buffer full, cycling through unconfirmed chunks.
        w.act(0, |n, now| {
            for _ in 0..total {
                if confirmed[cursor] {
                    cursor = (cursor + 1) % total;
                    continue;
                }
                let mut msg = (cursor as u32).to_be_bytes().to_vec();
                msg.extend_from_slice(&body);
                if n.send(now, route, Class::Bulk, &msg).is_err() {
                    break;
                }
                cursor = (cursor + 1) % total;
            }
        });
        // Destination: report what it has.
        if let Some(r) = back_route.filter(|_| w.now() >= next_report) {
            let mut bitmap = vec![0u8; total / 8];
            for (i, h) in have.iter().enumerate() {
                if *h {
                    bitmap[i / 8] |= 1 << (i % 8);
                }
            }
            w.act(dst, |n, now| {
                let _ = n.send(now, r, Class::Realtime, &bitmap);
            });
            next_report = w.now() + Duration::from_millis(10);
        }
        let step_end = (w.now() + Duration::from_millis(10)).min(end);
        w.run_until(step_end, |_, node, ev| {
            match ev {
                Event::Route(RouteEvent::Data { route: r, data, .. }) if node == dst && data.len() >= 4 => {
                    back_route = Some(r);
                    let i = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
                    if i < total && !have[i] {
                        have[i] = true;
                        unique += (data.len() - 4) as u64;
                    }
                }
                Event::Route(RouteEvent::Data { data, .. }) if node == 0 && data.len() == total / 8 => {
                    for (i, c) in confirmed.iter_mut().enumerate() {
                        *c |= data[i / 8] & (1 << (i % 8)) != 0;
                    }
                }
                _ => {}
            }
            true
        });
    }
    unique as f64 / duration.as_secs_f64() / spec.bandwidth as f64
}

impl LossReport {
    pub fn table(&self) -> String {
        table(&[
            ("scenario", self.scenario.to_string()),
            ("seed", self.seed.to_string()),
            ("loss per link", format!("{:.0}%", self.loss * 100.0)),
            ("hops", self.hops.to_string()),
            ("bytes", self.bytes.to_string()),
            ("intact (sha256, in order)", self.intact.to_string()),
            ("goodput / link bandwidth", format!("{:.3}", self.goodput)),
            ("goodput / (1 - loss)", format!("{:.3}", self.goodput_of_limit)),
            ("end-to-end baseline goodput", format!("{:.4}", self.baseline_e2e_goodput)),
            ("max buffer at any hop", format!("{} bytes", self.max_buffer_bytes)),
            ("retransmitted (all hops)", format!("{} bytes", self.retransmitted_bytes)),
            ("route setup", format!("{:.0} ms", self.route_setup_ms)),
            ("transfer", format!("{:.0} ms", self.transfer_ms)),
            ("simulated time", format!("{:.0} ms", self.sim_time_ms)),
            ("wall time", format!("{:.0} ms", self.wall_time_ms)),
        ])
    }
}

/// `eight-hop-loss --sweep`: the scenario at every loss rate 0, 0.1, ..., 0.9.
pub fn eight_hop_loss_sweep(seed: u64, bytes: usize, baseline_secs: u64) -> Vec<LossReport> {
    (0..10).map(|i| eight_hop_loss(seed, f64::from(i) / 10.0, bytes, baseline_secs)).collect()
}

/// The sweep as a table, one row per loss rate.
pub fn sweep_table(runs: &[LossReport]) -> String {
    let mut out = format!("{:>6} {:>7} {:>8} {:>13} {:>9}\n", "loss", "intact", "goodput", "of (1 - loss)", "setup s");
    for r in runs {
        out.push_str(&format!(
            "{:>6.1} {:>7} {:>8.3} {:>13.3} {:>9.1}\n",
            r.loss,
            r.intact,
            r.goodput,
            r.goodput_of_limit,
            r.route_setup_ms / 1e3
        ));
    }
    out
}

/// Result of the `qos` scenario.
#[derive(Debug, Clone, Serialize)]
pub struct QosReport {
    pub scenario: &'static str,
    pub seed: u64,
    pub hops: usize,
    pub duration_s: f64,
    /// Realtime frames (50/s of 200 B) sent as the realtime class while a bulk transfer
    /// saturates the same route.
    pub realtime_p99_latency_ms: f64,
    pub realtime_p99_latency_ms_without_bulk: f64,
    /// Bulk payload rate / raw bandwidth of one link (0..1).
    pub bulk_goodput: f64,
    /// Realtime frames delivered / sent (with bulk).
    pub realtime_delivered: f64,
    /// The same with one FIFO class: the realtime frames queue with the bulk data.
    pub fifo_realtime_p99_latency_ms: f64,
    pub fifo_realtime_p99_latency_ms_without_bulk: f64,
    pub fifo_bulk_goodput: f64,
    pub fifo_realtime_delivered: f64,
    pub wall_time_ms: f64,
}

/// Size of one realtime frame in the `qos` scenario.
pub const QOS_FRAME_BYTES: usize = 200;

struct QosRun {
    p99_ms: f64,
    bulk_goodput: f64,
    delivered: f64,
}

fn p99(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::INFINITY;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1]
}

/// One run: a route over `hops` hops; 50 realtime frames/s for `duration`, in `rt_class`;
/// optionally a bulk transfer filling the route at the same time.
fn qos_run(seed: u64, hops: usize, rt_class: Class, with_bulk: bool, duration: Duration) -> QosRun {
    let spec = WireSpec::default();
    let mut w = World::new(seed);
    let nodes = line(&mut w, hops + 1, &NodeConfig::default(), &spec, Duration::from_secs(30));
    let Some(route) = nodes.and_then(|n| open_route(&mut w, n[0], &n[1..], Duration::from_secs(30)).ok()) else {
        return QosRun { p99_ms: f64::INFINITY, bulk_goodput: 0.0, delivered: 0.0 };
    };
    let dst = hops;
    let start = w.now();
    let end = start + duration;
    // Enough bulk data to keep the route full for the whole run.
    let bulk_bytes = if with_bulk { (spec.bandwidth as f64 * duration.as_secs_f64() * 1.2) as usize } else { 0 };
    let mut bulk = BulkSender::new(payload(seed, bulk_bytes), Class::Bulk);
    bulk.pump(&mut w, 0, route);
    let mut latencies = Vec::new();
    let mut bulk_rx = 0u64;
    let mut sent_frames = 0u64;
    let mut seq = 0u64;
    let mut next_frame = start;
    while next_frame < end {
        w.run_until(next_frame, |w, node, ev| {
            match ev {
                Event::Route(RouteEvent::Data { data, .. }) if node == dst => {
                    if data.len() == QOS_FRAME_BYTES && data[..4] == *b"RTF!" {
                        let sent = u64::from_be_bytes(data[4..12].try_into().unwrap_or_default());
                        let now = (w.now() - start).as_nanos() as u64;
                        latencies.push(now.saturating_sub(sent) as f64 / 1e6);
                    } else if w.now() <= end {
                        bulk_rx += data.len() as u64;
                    }
                }
                Event::Route(RouteEvent::Writable { class: Class::Bulk, .. }) if node == 0 => {
                    bulk.pump(w, 0, route);
                }
                _ => {}
            }
            true
        });
        let mut frame = vec![0u8; QOS_FRAME_BYTES];
        frame[..4].copy_from_slice(b"RTF!");
        frame[4..12].copy_from_slice(&((w.now() - start).as_nanos() as u64).to_be_bytes());
        frame[12..20].copy_from_slice(&seq.to_be_bytes());
        seq += 1;
        if w.act(0, |n, now| n.send(now, route, rt_class, &frame)).is_ok() {
            sent_frames += 1;
        }
        next_frame += Duration::from_millis(20);
    }
    // Let the last frames arrive (they count; bulk after `end` does not).
    let settle = w.now() + Duration::from_secs(2);
    w.run_until(settle, |w, node, ev| {
        if let Event::Route(RouteEvent::Data { data, .. }) = ev {
            if node == dst && data.len() == QOS_FRAME_BYTES && data[..4] == *b"RTF!" {
                let sent = u64::from_be_bytes(data[4..12].try_into().unwrap_or_default());
                latencies.push(((w.now() - start).as_nanos() as u64).saturating_sub(sent) as f64 / 1e6);
            }
        }
        true
    });
    let delivered = latencies.len() as f64 / sent_frames.max(1) as f64;
    QosRun {
        p99_ms: p99(latencies),
        bulk_goodput: bulk_rx as f64 / duration.as_secs_f64() / spec.bandwidth as f64,
        delivered,
    }
}

/// `qos`: a 3-hop route carries a bulk transfer plus a realtime flow of 50 frames/s of 200 B;
/// realtime latency with and without the bulk transfer, for skyroute's two classes and for a
/// single FIFO class.
pub fn qos(seed: u64, duration: Duration) -> QosReport {
    let wall = Instant::now(); // test-only clock: wall time the scenario reports
    let hops = 3;
    let with = qos_run(seed, hops, Class::Realtime, true, duration);
    let without = qos_run(seed, hops, Class::Realtime, false, duration);
    let fifo = qos_run(seed, hops, Class::Bulk, true, duration);
    let fifo_without = qos_run(seed, hops, Class::Bulk, false, duration);
    QosReport {
        scenario: "qos",
        seed,
        hops,
        duration_s: duration.as_secs_f64(),
        realtime_p99_latency_ms: with.p99_ms,
        realtime_p99_latency_ms_without_bulk: without.p99_ms,
        bulk_goodput: with.bulk_goodput,
        realtime_delivered: with.delivered,
        fifo_realtime_p99_latency_ms: fifo.p99_ms,
        fifo_realtime_p99_latency_ms_without_bulk: fifo_without.p99_ms,
        fifo_bulk_goodput: fifo.bulk_goodput,
        fifo_realtime_delivered: fifo.delivered,
        wall_time_ms: wall.elapsed().as_secs_f64() * 1e3,
    }
}

impl QosReport {
    pub fn table(&self) -> String {
        format!(
            "scenario {} (seed {}, {} hops, {:.0} s simulated)\n\n{:<28}{:>14}{:>14}\n{:<28}{:>14.1}{:>14.1}\n{:<28}{:>14.1}{:>14.1}\n{:<28}{:>14.3}{:>14.3}\n{:<28}{:>14.3}{:>14.3}\n\nwall time {:.0} ms\n",
            self.scenario,
            self.seed,
            self.hops,
            self.duration_s,
            "",
            "two classes",
            "one FIFO",
            "realtime p99 with bulk (ms)",
            self.realtime_p99_latency_ms,
            self.fifo_realtime_p99_latency_ms,
            "realtime p99 alone (ms)",
            self.realtime_p99_latency_ms_without_bulk,
            self.fifo_realtime_p99_latency_ms_without_bulk,
            "bulk goodput",
            self.bulk_goodput,
            self.fifo_bulk_goodput,
            "realtime frames delivered",
            self.realtime_delivered,
            self.fifo_realtime_delivered,
            self.wall_time_ms,
        )
    }
}
