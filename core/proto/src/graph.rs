//! Route finding: k node-disjoint routes from this node's view of the graph.
//!
//! [`RouteFinder`] is what sessions ask; [`Graph`] is a node-local topology view fed by whoever
//! knows the topology (configuration, the simulator's scenario, discovery and the DHT). It
//! stands below both sessions and discovery so neither imports the other. Routes are found by
//! repeated shortest-path search (latency-weighted Dijkstra), removing the intermediate nodes
//! of each route found, so the routes share no relay and lose no more than one route to one
//! failed node.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use crate::identity::PublicKey;

/// Finds routes for sessions.
pub trait RouteFinder {
    /// Up to `k` routes from `from` to `to`, each a hop list ending with `to` (not starting with
    /// `from`). The first hop must be in `first_hops` (the neighbours we have a link up to); no
    /// route may pass through a node in `avoid`. Routes are node-disjoint.
    fn find(
        &self,
        from: &PublicKey,
        to: &PublicKey,
        k: usize,
        first_hops: &BTreeSet<PublicKey>,
        avoid: &BTreeSet<PublicKey>,
    ) -> Vec<Vec<PublicKey>>;
}

/// An undirected graph of known links with a cost (e.g. latency in milliseconds) each.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    edges: BTreeMap<PublicKey, BTreeMap<PublicKey, u32>>,
    /// Nodes that must be entered through one of their guards.
    guards: BTreeMap<PublicKey, Vec<PublicKey>>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or re-costs) the link between `a` and `b`.
    pub fn add_edge(&mut self, a: PublicKey, b: PublicKey, cost: u32) {
        self.edges.entry(a).or_default().insert(b, cost.max(1));
        self.edges.entry(b).or_default().insert(a, cost.max(1));
    }

    /// `dest` is entered only through one of `guards` (from its signed record); empty: no
    /// requirement. Routes then end `.., guard, dest`; the guard's link to `dest` need not be
    /// known (the destination named it).
    pub fn set_guards(&mut self, dest: PublicKey, guards: Vec<PublicKey>) {
        if guards.is_empty() {
            self.guards.remove(&dest);
        } else {
            self.guards.insert(dest, guards);
        }
    }

    /// A multiple-input, multiple-output virtual route (seed: "SONET topology"): `members`
    /// (a ring, or any set with full transit between them, each pair joined by a virtual
    /// link) offer transit between any two of them at `transit_cost`. Each pair becomes an
    /// edge whose cost obeys the seed's triangle inequality: never below the cheapest path
    /// between the two already known (a virtual route costs at least what it rides on), so
    /// summarising links cannot make a route look cheaper than its parts.
    pub fn add_virtual_route(&mut self, members: &[PublicKey], transit_cost: u32) {
        let mut edges = Vec::new();
        for (i, a) in members.iter().enumerate() {
            for b in &members[i + 1..] {
                if a == b {
                    continue;
                }
                let underlying = self.path_cost(a, b).unwrap_or(0);
                edges.push((*a, *b, (transit_cost as u64).max(underlying).min(u32::MAX as u64) as u32));
            }
        }
        for (a, b, c) in edges {
            if self.cost(&a, &b).is_none_or(|old| c < old) {
                self.add_edge(a, b, c);
            }
        }
    }

    /// Every node reachable from `from` with its distance in hops, breadth-first (nearest
    /// first; `from` itself at 0).
    pub fn by_hops(&self, from: &PublicKey) -> Vec<(PublicKey, u32)> {
        let mut seen = BTreeSet::from([*from]);
        let mut queue = VecDeque::from([(*from, 0u32)]);
        let mut out = Vec::new();
        while let Some((node, depth)) = queue.pop_front() {
            out.push((node, depth));
            for next in self.neighbours(&node) {
                if seen.insert(next) {
                    queue.push_back((next, depth + 1));
                }
            }
        }
        out
    }

    /// The cost of the cheapest known path between `a` and `b`.
    pub fn path_cost(&self, a: &PublicKey, b: &PublicKey) -> Option<u64> {
        let all: BTreeSet<PublicKey> = self.neighbours(a).collect();
        let path = self.shortest(a, b, &all, &BTreeSet::new())?;
        let mut cost = 0u64;
        let mut prev = a;
        for n in &path {
            cost += self.cost(prev, n)? as u64;
            prev = n;
        }
        Some(cost)
    }

    /// The guard nodes `dest` announced (routes to it end through one of them).
    pub fn guards(&self, dest: &PublicKey) -> &[PublicKey] {
        self.guards.get(dest).map_or(&[], |g| g.as_slice())
    }

    /// Removes the link between `a` and `b`.
    pub fn remove_edge(&mut self, a: &PublicKey, b: &PublicKey) {
        if let Some(m) = self.edges.get_mut(a) {
            m.remove(b);
        }
        if let Some(m) = self.edges.get_mut(b) {
            m.remove(a);
        }
    }

    /// Every node with a known edge.
    pub fn nodes(&self) -> impl Iterator<Item = &PublicKey> {
        self.edges.iter().filter(|(_, m)| !m.is_empty()).map(|(k, _)| k)
    }

    /// The nodes linked to `n`.
    pub fn neighbours<'a>(&'a self, n: &PublicKey) -> impl Iterator<Item = PublicKey> + 'a {
        self.edges.get(n).into_iter().flat_map(|m| m.keys().copied())
    }

    /// The cost of the link `a` - `b`, if known.
    pub fn cost(&self, a: &PublicKey, b: &PublicKey) -> Option<u32> {
        self.edges.get(a)?.get(b).copied()
    }

    /// Links in the graph.
    pub fn edge_count(&self) -> usize {
        self.edges.values().map(|m| m.len()).sum::<usize>() / 2
    }

    fn shortest(
        &self,
        from: &PublicKey,
        to: &PublicKey,
        first_hops: &BTreeSet<PublicKey>,
        blocked: &BTreeSet<PublicKey>,
    ) -> Option<Vec<PublicKey>> {
        let mut dist: BTreeMap<PublicKey, u64> = BTreeMap::new();
        let mut prev: BTreeMap<PublicKey, PublicKey> = BTreeMap::new();
        let mut heap = BinaryHeap::new();
        dist.insert(*from, 0);
        heap.push(std::cmp::Reverse((0u64, *from)));
        while let Some(std::cmp::Reverse((d, n))) = heap.pop() {
            if n == *to {
                let mut path = vec![n];
                let mut cur = n;
                while let Some(p) = prev.get(&cur) {
                    if p == from {
                        break;
                    }
                    path.push(*p);
                    cur = *p;
                }
                path.reverse();
                return Some(path);
            }
            if dist.get(&n).is_some_and(|&best| d > best) {
                continue;
            }
            for (m, c) in self.edges.get(&n).into_iter().flatten() {
                if m == from || (n == *from && !first_hops.contains(m)) || (m != to && blocked.contains(m)) {
                    continue;
                }
                let nd = d + *c as u64;
                if dist.get(m).is_none_or(|&old| nd < old) {
                    dist.insert(*m, nd);
                    prev.insert(*m, n);
                    heap.push(std::cmp::Reverse((nd, *m)));
                }
            }
        }
        None
    }
}

impl RouteFinder for Graph {
    fn find(
        &self,
        from: &PublicKey,
        to: &PublicKey,
        k: usize,
        first_hops: &BTreeSet<PublicKey>,
        avoid: &BTreeSet<PublicKey>,
    ) -> Vec<Vec<PublicKey>> {
        let guards = self.guards(to);
        if !guards.is_empty() && !guards.contains(from) {
            return self.find_via_guards(from, to, guards, k, first_hops, avoid);
        }
        let mut blocked = avoid.clone();
        let mut out = Vec::new();
        // A direct link is a route of one hop; it can be used once.
        let mut firsts = first_hops.clone();
        while out.len() < k {
            let Some(r) = self.shortest(from, to, &firsts, &blocked) else { break };
            for n in &r[..r.len() - 1] {
                blocked.insert(*n);
            }
            if r.len() == 1 {
                firsts.remove(to);
            }
            out.push(r);
        }
        out
    }
}

impl Graph {
    /// Routes that enter `to` through its guards: the cheapest route to each guard (not
    /// through `to`, disjoint from the others), then `to`. Never a route around the guards.
    fn find_via_guards(
        &self,
        from: &PublicKey,
        to: &PublicKey,
        guards: &[PublicKey],
        k: usize,
        first_hops: &BTreeSet<PublicKey>,
        avoid: &BTreeSet<PublicKey>,
    ) -> Vec<Vec<PublicKey>> {
        let mut blocked = avoid.clone();
        blocked.insert(*to);
        let mut out = Vec::new();
        for guard in guards.iter().filter(|g| !avoid.contains(g)) {
            if out.len() >= k {
                break;
            }
            let mut others = blocked.clone();
            others.remove(guard);
            let Some(mut r) = self.shortest(from, guard, first_hops, &others) else { continue };
            blocked.extend(r.iter().copied());
            r.push(*to);
            out.push(r);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn finds_disjoint_routes_in_order_of_cost() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let k: Vec<PublicKey> = (0..7).map(|_| SecretKey::generate(&mut rng).public_key()).collect();
        let (src, dst) = (k[0], k[6]);
        let mut g = Graph::new();
        // src - 1 - 2 - dst (cost 3), src - 3 - dst (cost 20), src - 4 - 5 - dst (cost 30), 1 - 5 link.
        g.add_edge(src, k[1], 1);
        g.add_edge(k[1], k[2], 1);
        g.add_edge(k[2], dst, 1);
        g.add_edge(src, k[3], 10);
        g.add_edge(k[3], dst, 10);
        g.add_edge(src, k[4], 10);
        g.add_edge(k[4], k[5], 10);
        g.add_edge(k[5], dst, 10);
        g.add_edge(k[1], k[5], 1);
        let all: BTreeSet<_> = [k[1], k[3], k[4]].into();
        let r = g.find(&src, &dst, 3, &all, &BTreeSet::new());
        assert_eq!(r, vec![vec![k[1], k[2], dst], vec![k[3], dst], vec![k[4], k[5], dst]]);
        // Only the neighbours we have links to can start a route (the cheapest way on from 4
        // crosses over to 1 and 2).
        let r = g.find(&src, &dst, 3, &[k[4]].into(), &BTreeSet::new());
        assert_eq!(r, vec![vec![k[4], k[5], k[1], k[2], dst]]);
        // Avoided nodes are not used.
        let r = g.find(&src, &dst, 3, &all, &[k[2], k[3]].into());
        assert_eq!(r, vec![vec![k[1], k[5], dst]]);
        // Guards: dst is entered only through 3 or 5 (the cheap way through 2 is never used),
        // and a guard that cannot be reached gives no route rather than a way around it.
        g.set_guards(dst, vec![k[3], k[5]]);
        let r = g.find(&src, &dst, 3, &all, &BTreeSet::new());
        assert_eq!(r, vec![vec![k[3], dst], vec![k[1], k[5], dst]]);
        let unknown = SecretKey::generate(&mut rng).public_key();
        g.set_guards(dst, vec![unknown]);
        assert!(g.find(&src, &dst, 3, &all, &BTreeSet::new()).is_empty());
        g.set_guards(dst, vec![]);
        assert_eq!(g.find(&src, &dst, 1, &all, &BTreeSet::new()), vec![vec![k[1], k[2], dst]]);
    }

    #[test]
    fn virtual_routes_cost_at_least_what_they_ride_on() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let k: Vec<PublicKey> = (0..6).map(|_| SecretKey::generate(&mut rng).public_key()).collect();
        let mut g = Graph::new();
        // A ring 0 - 1 - 2 - 3 - 0 (cost 10 each) and a spur 3 - 4, 5 alone.
        for (a, b) in [(0, 1), (1, 2), (2, 3), (3, 0), (3, 4)] {
            g.add_edge(k[a], k[b], 10);
        }
        // The ring as a MIMO virtual route offering transit at 5: each pair costs at least the
        // path under it (0 - 2 is 20 over the ring), neighbours on the ring stay at 10.
        g.add_virtual_route(&[k[0], k[1], k[2], k[3]], 5);
        assert_eq!(g.cost(&k[0], &k[2]), Some(20));
        assert_eq!(g.cost(&k[1], &k[3]), Some(20));
        assert_eq!(g.cost(&k[0], &k[1]), Some(10));
        // A pricier transit than the paths keeps its price; a member with no known path
        // gets the transit cost alone.
        g.add_virtual_route(&[k[4], k[5]], 50);
        assert_eq!(g.cost(&k[4], &k[5]), Some(50));
        // Route finding takes the virtual hop: 4 -> 3 -> 1 (one virtual hop) -> ...
        let r = g.find(&k[4], &k[1], 1, &[k[3]].into(), &BTreeSet::new());
        assert_eq!(r, vec![vec![k[3], k[1]]]);
        // The triangle inequality for the virtual pairs: without the virtual edge, the path
        // under it never costs more than the edge.
        for (a, b) in [(0, 2), (1, 3)] {
            let mut without = g.clone();
            without.remove_edge(&k[a], &k[b]);
            let under = without.path_cost(&k[a], &k[b]).unwrap();
            assert!(g.cost(&k[a], &k[b]).unwrap() as u64 >= under);
        }
    }
}
