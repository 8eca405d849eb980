//! `scale` (seed: "virtual routes: topology at scale", "SONET topology"): how big route
//! tables get as the network grows, with and without virtual routes.
//!
//! The network: edge nodes (16 per aggregation node) feed aggregation nodes, which hang off a
//! backbone ring with chords at powers of two (a SONET-like ring whose diameter grows with
//! log N); the backbone grows with the network (a member per 4 aggregation nodes). Every
//! edge node keeps one route to a random other edge node.
//!
//! - Without virtual routes a route is physical: edge, aggregation, the backbone's shortest
//!   path, aggregation, edge; every node on it holds an entry.
//! - With virtual routes each aggregation node keeps virtual links to the aggregation nodes
//!   2^j places ahead of it (j = 0, 1, ...: an overlay of diameter log G), each carried by one
//!   route over the backbone; edge routes travel the overlay (greedy, at most log G virtual
//!   hops) and only the aggregation nodes they cross hold entries for them. Backbone nodes
//!   hold carriers only, whatever the number of routes.
//!
//! Tables are counted with the route layer's rule (the source and every hop of a route hold
//! one entry; a route over a virtual link holds none between its ends), which
//! `core/sim/tests/routes.rs` checks against real nodes building the same routes in the simulator.

use std::collections::VecDeque;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

/// Edge nodes per aggregation node, and aggregation nodes per backbone member.
pub const EDGES_PER_AGG: usize = 16;
pub const AGGS_PER_BACKBONE: usize = 4;

/// The network's shape for about `n` nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub backbone: usize,
    pub aggs: usize,
    pub edges_per_agg: usize,
}

impl Shape {
    pub fn for_nodes(n: usize) -> Shape {
        let aggs = (n / (EDGES_PER_AGG + 1)).max(2);
        let backbone = (aggs / AGGS_PER_BACKBONE).clamp(2, aggs);
        Shape { backbone, aggs, edges_per_agg: EDGES_PER_AGG }
    }

    pub fn nodes(&self) -> usize {
        self.backbone + self.aggs * (1 + self.edges_per_agg)
    }

    pub fn bb(&self, i: usize) -> usize {
        i
    }

    pub fn agg(&self, g: usize) -> usize {
        self.backbone + g
    }

    pub fn edge(&self, g: usize, k: usize) -> usize {
        self.backbone + self.aggs + g * self.edges_per_agg + k
    }

    /// The backbone node aggregation node `g` hangs off (contiguous blocks).
    pub fn home(&self, g: usize) -> usize {
        g * self.backbone / self.aggs
    }

    /// Backbone chords: i <-> i + 2^j around the ring.
    pub fn backbone_links(&self) -> Vec<(usize, usize)> {
        let b = self.backbone;
        let mut out = Vec::new();
        let mut step = 1;
        while step < b {
            for i in 0..b {
                let j = (i + step) % b;
                let e = (i.min(j), i.max(j));
                if e.0 != e.1 && !out.contains(&e) {
                    out.push(e);
                }
            }
            step *= 2;
        }
        out
    }

    /// Overlay virtual links: aggregation node g to g + 2^j.
    pub fn overlay(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for g in 0..self.aggs {
            let mut step = 1;
            while step < self.aggs {
                out.push((g, (g + step) % self.aggs));
                step *= 2;
            }
        }
        out
    }
}

/// Shortest paths on the backbone (BFS from every member).
pub struct Backbone {
    next: Vec<Vec<usize>>,
    pub diameter: usize,
}

impl Backbone {
    pub fn new(s: &Shape) -> Backbone {
        let b = s.backbone;
        let mut adj = vec![Vec::new(); b];
        for (x, y) in s.backbone_links() {
            adj[x].push(y);
            adj[y].push(x);
        }
        let mut next = vec![vec![usize::MAX; b]; b];
        let mut diameter = 0;
        for dst in 0..b {
            // BFS from dst: next[src][dst] is src's parent towards dst.
            let mut dist = vec![usize::MAX; b];
            dist[dst] = 0;
            next[dst][dst] = dst;
            let mut q = VecDeque::from([dst]);
            while let Some(u) = q.pop_front() {
                for &v in &adj[u] {
                    if dist[v] == usize::MAX {
                        dist[v] = dist[u] + 1;
                        next[v][dst] = u;
                        q.push_back(v);
                    }
                }
            }
            diameter = diameter.max(dist.iter().copied().filter(|d| *d != usize::MAX).max().unwrap_or(0));
        }
        Backbone { next, diameter }
    }

    /// Backbone members from `a` to `b`, both included.
    pub fn path(&self, a: usize, b: usize) -> Vec<usize> {
        let mut p = vec![a];
        let mut u = a;
        while u != b {
            u = self.next[u][b];
            p.push(u);
        }
        p
    }
}

/// A route: its source and its hops (node indices).
pub type Hops = (usize, Vec<usize>);

/// Every edge node's destination.
pub fn demands(s: &Shape, seed: u64) -> Vec<((usize, usize), (usize, usize))> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let total = s.aggs * s.edges_per_agg;
    (0..total)
        .map(|x| {
            let mut y = (rng.next_u64() % (total as u64 - 1)) as usize;
            if y >= x {
                y += 1;
            }
            ((x / s.edges_per_agg, x % s.edges_per_agg), (y / s.edges_per_agg, y % s.edges_per_agg))
        })
        .collect()
}

/// Physical routes: edge, aggregation, backbone path, aggregation, edge.
pub fn physical_routes(s: &Shape, bb: &Backbone, seed: u64) -> Vec<Hops> {
    demands(s, seed)
        .into_iter()
        .map(|((gx, kx), (gy, ky))| {
            let mut hops = vec![s.agg(gx)];
            if gx != gy {
                hops.extend(bb.path(s.home(gx), s.home(gy)).into_iter().map(|b| s.bb(b)));
                hops.push(s.agg(gy));
            }
            hops.push(s.edge(gy, ky));
            (s.edge(gx, kx), hops)
        })
        .collect()
}

/// The carriers of the overlay's virtual links (aggregation to aggregation over the backbone).
pub fn carriers(s: &Shape, bb: &Backbone) -> Vec<Hops> {
    s.overlay()
        .into_iter()
        .map(|(g, h)| {
            let mut hops: Vec<usize> = bb.path(s.home(g), s.home(h)).into_iter().map(|b| s.bb(b)).collect();
            hops.push(s.agg(h));
            (s.agg(g), hops)
        })
        .collect()
}

/// Routes over the overlay: edge, aggregation nodes on the greedy overlay path, edge.
pub fn virtual_routes(s: &Shape, seed: u64) -> Vec<Hops> {
    demands(s, seed)
        .into_iter()
        .map(|((gx, kx), (gy, ky))| {
            let mut hops = vec![s.agg(gx)];
            let mut at = gx;
            while at != gy {
                let d = (gy + s.aggs - at) % s.aggs;
                let step = 1usize << (usize::BITS - 1 - d.leading_zeros());
                at = (at + step) % s.aggs;
                hops.push(s.agg(at));
            }
            hops.push(s.edge(gy, ky));
            (s.edge(gx, kx), hops)
        })
        .collect()
}

/// Route table entries per node for a set of routes.
pub fn tables(s: &Shape, routes: &[Hops]) -> Vec<usize> {
    let mut t = vec![0; s.nodes()];
    for (src, hops) in routes {
        t[*src] += 1;
        for h in hops {
            t[*h] += 1;
        }
    }
    t
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleRow {
    pub nodes: usize,
    pub backbone: usize,
    pub aggregation: usize,
    pub edge: usize,
    /// Longest shortest path between two edge nodes (physical hops).
    pub diameter: usize,
    /// Largest route table at any node: physical routes, and with virtual routes.
    pub max_table_without: usize,
    pub max_table_with: usize,
    /// Largest at a backbone node without and with virtual routes, and at an aggregation
    /// node with them.
    pub max_backbone_without: usize,
    pub max_backbone_with: usize,
    pub max_aggregation_with: usize,
    pub virtual_links: usize,
    /// Mean hops of an edge-to-edge route (virtual hops counted once).
    pub mean_hops_without: f64,
    pub mean_hops_with: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub scenario: &'static str,
    pub seed: u64,
    pub rows: Vec<ScaleRow>,
    /// Growth of the largest table from the smallest to the largest network, against the
    /// growth of log2(nodes) and of nodes.
    pub growth_with: f64,
    pub growth_without: f64,
    pub growth_log_n: f64,
    pub growth_n: f64,
    pub wall_time_ms: f64,
}

pub fn row(n: usize, seed: u64) -> ScaleRow {
    let s = Shape::for_nodes(n);
    let bb = Backbone::new(&s);
    let phys = physical_routes(&s, &bb, seed);
    let mut virt = carriers(&s, &bb);
    let inner = virtual_routes(&s, seed);
    let mean = |r: &[Hops]| r.iter().map(|(_, h)| h.len()).sum::<usize>() as f64 / r.len().max(1) as f64;
    let (mean_without, mean_with) = (mean(&phys), mean(&inner));
    virt.extend(inner);
    let without = tables(&s, &phys);
    let with = tables(&s, &virt);
    let max_in = |t: &[usize], r: std::ops::Range<usize>| t[r].iter().copied().max().unwrap_or(0);
    ScaleRow {
        nodes: s.nodes(),
        backbone: s.backbone,
        aggregation: s.aggs,
        edge: s.aggs * s.edges_per_agg,
        diameter: bb.diameter + 4,
        max_table_without: without.iter().copied().max().unwrap_or(0),
        max_table_with: with.iter().copied().max().unwrap_or(0),
        max_backbone_without: max_in(&without, 0..s.backbone),
        max_backbone_with: max_in(&with, 0..s.backbone),
        max_aggregation_with: max_in(&with, s.backbone..s.backbone + s.aggs),
        virtual_links: s.overlay().len(),
        mean_hops_without: mean_without,
        mean_hops_with: mean_with,
    }
}

/// Rows for 1k, 10k and 100k nodes (or `sizes`).
pub fn scale(seed: u64, sizes: &[usize]) -> ScaleReport {
    let wall = std::time::Instant::now(); // test-only clock: wall time the scenario reports
    let rows: Vec<ScaleRow> = sizes.iter().map(|n| row(*n, seed)).collect();
    let (first, last) = (&rows[0], &rows[rows.len() - 1]);
    let ratio = |a: usize, b: usize| b as f64 / a.max(1) as f64;
    ScaleReport {
        scenario: "scale",
        seed,
        growth_with: ratio(first.max_table_with, last.max_table_with),
        growth_without: ratio(first.max_table_without, last.max_table_without),
        growth_log_n: (last.nodes as f64).log2() / (first.nodes as f64).log2(),
        growth_n: ratio(first.nodes, last.nodes),
        rows,
        wall_time_ms: wall.elapsed().as_secs_f64() * 1e3,
    }
}

impl ScaleReport {
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:>8} {:>9} {:>5} {:>6} {:>8} {:>15} {:>12} {:>10} {:>9}\n",
            "nodes", "backbone", "aggs", "diam", "vlinks", "max table phys", "max w/ virt", "bb p/v", "hops p/v"
        );
        for r in &self.rows {
            s += &format!(
                "{:>8} {:>9} {:>5} {:>6} {:>8} {:>15} {:>12} {:>6}/{:<4} {:>4.1}/{:.1}\n",
                r.nodes,
                r.backbone,
                r.aggregation,
                r.diameter,
                r.virtual_links,
                r.max_table_without,
                r.max_table_with,
                r.max_backbone_without,
                r.max_backbone_with,
                r.mean_hops_without,
                r.mean_hops_with
            );
        }
        s += &format!(
            "largest table grows x{:.2} with virtual routes, x{:.2} without; log2(nodes) x{:.2}, nodes x{:.0}\n",
            self.growth_with, self.growth_without, self.growth_log_n, self.growth_n
        );
        s
    }
}
