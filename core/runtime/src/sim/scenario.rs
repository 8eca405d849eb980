//! Named scenarios for `skyroute sim`. Each builds a world from a seed, runs it, and returns a
//! report that prints as a table or as one JSON object.

use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use skyroute_proto::{Event, NodeConfig, RouteEvent, RouteId};

use super::{WireSpec, World};

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

/// Receives `[offset u64][bytes]` chunks into a buffer of known size.
pub struct Reassembly {
    buf: Vec<u8>,
    seen: Vec<bool>,
    chunk: usize,
    pub delivered: u64,
}

impl Reassembly {
    pub fn new(len: usize, chunk: usize) -> Self {
        Reassembly { buf: vec![0; len], seen: vec![false; len.div_ceil(chunk)], chunk, delivered: 0 }
    }

    /// Accepts one chunk; false if it is malformed.
    pub fn accept(&mut self, msg: &[u8]) -> bool {
        let Some((off, data)) = msg.split_first_chunk::<8>() else { return false };
        let off = u64::from_be_bytes(*off) as usize;
        if off % self.chunk != 0 || off + data.len() > self.buf.len() {
            return false;
        }
        let idx = off / self.chunk;
        if !self.seen[idx] {
            self.seen[idx] = true;
            self.buf[off..off + data.len()].copy_from_slice(data);
            self.delivered += data.len() as u64;
        }
        true
    }

    pub fn complete(&self) -> bool {
        self.delivered as usize == self.buf.len()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// `eight-hop`: 9 nodes in a line; links handshake; the source telescopes a route over 8 hops
/// and sends `bytes` through it; the last node checks the SHA-256.
pub fn eight_hop(seed: u64, bytes: usize) -> EightHopReport {
    let wall = Instant::now();
    let hops = 8;
    let mut w = World::new(seed);
    let nodes: Vec<usize> = (0..=hops).map(|_| w.add_node(NodeConfig::default())).collect();
    for pair in nodes.windows(2) {
        w.add_wire(pair[0], pair[1], WireSpec::default());
        w.connect(pair[0], pair[1]);
    }
    let data = payload(seed, bytes);
    let chunk = w.node(0).route_mtu() - 8;
    let mut rx = Reassembly::new(bytes, chunk);
    let limit = w.now() + Duration::from_secs(120);

    // 1. Every link up.
    let mut up = 0;
    w.run_until(limit, |_, _, ev| {
        if matches!(ev, Event::LinkUp { .. }) {
            up += 1;
        }
        up < 2 * hops
    });
    // 2. Telescoping setup.
    let setup_start = w.now();
    let path: Vec<_> = nodes[1..].iter().map(|n| w.key(*n)).collect();
    let route = w.act(0, |n, now| n.open_route(now, &path));
    let mut ready = false;
    if let Ok(route) = route {
        w.run_until(limit, |_, node, ev| {
            if node == 0 && ev == Event::Route(RouteEvent::Ready { route }) {
                ready = true;
            }
            !ready && !matches!(ev, Event::Route(RouteEvent::Failed { .. }))
        });
    }
    let route_setup = w.now() - setup_start;
    // 3. Transfer.
    let send_start = w.now();
    let mut sent = 0u64;
    if let (true, Ok(route)) = (ready, route) {
        sent = send_chunks(&mut w, 0, route, &data, chunk);
        w.run_until(limit, |_, node, ev| {
            if let (true, Event::Route(RouteEvent::Data { data, .. })) = (node == hops, &ev) {
                rx.accept(data);
            }
            !rx.complete()
        });
    }
    let transfer = w.now() - send_start;
    let intact = rx.complete() && Sha256::digest(rx.bytes()) == Sha256::digest(&data);
    EightHopReport {
        scenario: "eight-hop",
        seed,
        hops,
        bytes_sent: sent,
        bytes_delivered: rx.delivered,
        intact,
        route_setup_ms: route_setup.as_secs_f64() * 1e3,
        sim_time_ms: w.elapsed().as_secs_f64() * 1e3,
        wall_time_ms: wall.elapsed().as_secs_f64() * 1e3,
        goodput_bytes_per_s: rx.delivered as f64 / transfer.as_secs_f64().max(1e-9),
        link_rekeys: w.link_rekeys(),
        datagrams: w.wire_stats.delivered,
        event_log_hash: w.log_hash(),
    }
}

/// Sends `data` as `[offset][bytes]` chunks on a route; returns the payload bytes queued.
pub fn send_chunks(w: &mut World, node: usize, route: RouteId, data: &[u8], chunk: usize) -> u64 {
    w.act(node, |n, now| {
        let mut sent = 0;
        for (i, part) in data.chunks(chunk).enumerate() {
            let mut msg = ((i * chunk) as u64).to_be_bytes().to_vec();
            msg.extend_from_slice(part);
            if n.send(now, route, &msg).is_ok() {
                sent += part.len() as u64;
            }
        }
        sent
    })
}

impl EightHopReport {
    pub fn table(&self) -> String {
        let rows = [
            ("scenario", self.scenario.to_string()),
            ("seed", self.seed.to_string()),
            ("hops", self.hops.to_string()),
            ("bytes sent", self.bytes_sent.to_string()),
            ("bytes delivered", self.bytes_delivered.to_string()),
            ("intact (sha256)", self.intact.to_string()),
            ("route setup", format!("{:.1} ms", self.route_setup_ms)),
            ("goodput", format!("{:.2} MB/s", self.goodput_bytes_per_s / 1e6)),
            ("link rekeys", self.link_rekeys.to_string()),
            ("datagrams delivered", self.datagrams.to_string()),
            ("simulated time", format!("{:.1} ms", self.sim_time_ms)),
            ("wall time", format!("{:.1} ms", self.wall_time_ms)),
            ("event log hash", self.event_log_hash[..16].to_string()),
        ];
        rows.iter().map(|(k, v)| format!("{k:<22}{v}\n")).collect()
    }
}
