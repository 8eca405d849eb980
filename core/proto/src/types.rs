//! The small values every layer shares: ids of links, routes and sessions, the service
//! class and direction of route messages, the local interface a link lives on and the
//! address trait, the RNG adapter, and how many copies a lossy path needs. The bottom of the crate: it imports nothing of ours,
//! so any layer can use these without importing a layer above it.

use std::num::NonZeroU32;

use rand_core::CryptoRngCore;

/// A local network interface a link lives on, as the driver numbers them: 0 is unbound (the OS
/// picks the way out), bound interfaces (a WiFi, a cellular modem) are 1..=255. A link stays
/// on the interface it was made on; a neighbour reachable over two interfaces has two links.
/// The initiator's interface is the link's *slot*, carried (authenticated) in the handshake,
/// so the responder tells the links apart too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Interface(pub u8);

impl Interface {
    /// No interface chosen: the OS routes the packet.
    pub const UNBOUND: Interface = Interface(0);
}

/// A transport address as the node sees it: where the peer is and which local interface
/// reaches it. Drivers whose sockets are not bound to interfaces use the default (every
/// address on [`Interface::UNBOUND`]).
pub trait Endpoint: Clone + Ord + std::fmt::Debug {
    /// The local interface packets to this address leave through (and arrived on).
    fn interface(&self) -> Interface {
        Interface::UNBOUND
    }

    /// The address as bytes, for a cookie bound to it (handshakes under load): every part a
    /// sender must really receive at (for IP: address and port). The default is the
    /// address's debug form.
    fn write_source(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(out, "{self:?}");
    }

    /// The part of the address one host's handshake budget is keyed by (for IP: the IPv4
    /// address or the IPv6 /64, not the port, which a host picks freely). The default is the
    /// whole source.
    fn write_host(&self, out: &mut Vec<u8>) {
        self.write_source(out)
    }
}

impl Endpoint for u8 {}
impl Endpoint for u16 {}
impl Endpoint for u32 {}
impl Endpoint for u64 {}
impl Endpoint for usize {}

/// Stable local handle of a link (one per neighbour key and slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u32);

/// A node-local route identifier (never 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(NonZeroU32);

impl RouteId {
    /// A route id from its number; None for 0.
    pub fn new(v: u32) -> Option<Self> {
        NonZeroU32::new(v).map(RouteId)
    }
    /// The route id's number.
    pub fn get(self) -> u32 {
        self.0.get()
    }
}

impl std::fmt::Display for RouteId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// Service class of a route message. Realtime frames always go first; bulk fills the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// Small, deadline-bound messages (voice, control): sent first.
    Realtime = 0,
    /// Throughput traffic: fills what realtime leaves.
    Bulk = 1,
}

impl Class {
    /// Both classes, realtime first.
    pub const ALL: [Class; 2] = [Class::Realtime, Class::Bulk];

    /// The class of a wire byte (0 realtime, 1 bulk); None otherwise.
    pub fn from_u8(v: u8) -> Option<Class> {
        match v {
            0 => Some(Class::Realtime),
            1 => Some(Class::Bulk),
            _ => None,
        }
    }
}

/// Direction on a route: from the source towards the last hop, or back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dir {
    /// From the source towards the last hop.
    Fwd,
    /// From the last hop back to the source.
    Back,
}

/// A session's local index (the peer uses its own; neither depends on routes).
pub type SessionId = u32;

/// Adapts `&mut dyn CryptoRngCore` to the `impl CryptoRngCore` that k256 takes.
pub(crate) struct RngRef<'a>(pub &'a mut dyn CryptoRngCore);

impl rand_core::RngCore for RngRef<'_> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.try_fill_bytes(dest)
    }
}

impl rand_core::CryptoRng for RngRef<'_> {}

/// Copies of one message, each lost independently with probability `loss`, for at least one
/// to get through with an even chance: 1 up to 50% loss, at most `max` (links send their
/// handshakes and acks this way over very lossy radios).
pub(crate) fn copies_for_even_chance(loss: f64, max: u32) -> u32 {
    if loss <= 0.5 {
        return 1;
    }
    ((0.5f64.ln() / loss.min(0.99).ln()).ceil() as u32).clamp(1, max)
}

/// A token bucket: `rate` tokens a second, at most `burst` at once (rate limits on handshakes,
/// route setups and DHT requests).
#[derive(Debug, Clone)]
struct TokenBucket {
    tokens: f64,
    at: std::time::Instant,
}

impl TokenBucket {
    /// A full bucket.
    fn full(burst: f64, now: std::time::Instant) -> Self {
        TokenBucket { tokens: burst, at: now }
    }

    /// Adds what `rate` earned since the last call, up to `burst`.
    fn refill(&mut self, now: std::time::Instant, rate: f64, burst: f64) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.at = now;
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: std::time::Instant, rate: f64, burst: f64) -> bool {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full (its owner has been idle long enough to be forgotten).
    fn is_full(&self, burst: f64) -> bool {
        self.tokens >= burst
    }
}

/// How often a full table of buckets looks for idle keys to forget (a flood of new keys must
/// not cost a walk over the table each).
const BUCKET_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// A token bucket per key (a source host, a neighbour), bounded: a new key beyond `max`
/// first forgets keys whose buckets are full again (at most every 100 ms), and is refused if
/// none is.
#[derive(Debug, Clone)]
pub(crate) struct Buckets<K> {
    map: std::collections::BTreeMap<K, TokenBucket>,
    rate: f64,
    burst: f64,
    max: usize,
    swept: Option<std::time::Instant>,
}

impl<K: Ord> Buckets<K> {
    /// Buckets of `rate` a second, `burst` at once, for at most `max` keys.
    pub(crate) fn new(rate: u32, burst: u32, max: usize) -> Self {
        Buckets {
            map: Default::default(),
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            max: max.max(1),
            swept: None,
        }
    }

    /// Takes a token from `key`'s bucket (borrowed: a known key costs no allocation).
    pub(crate) fn take<Q>(&mut self, now: std::time::Instant, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Ord + ToOwned<Owned = K> + ?Sized,
    {
        let (rate, burst) = (self.rate, self.burst);
        if let Some(b) = self.map.get_mut(key) {
            return b.take(now, rate, burst);
        }
        if self.map.len() >= self.max {
            if self.swept.is_some_and(|t| now.saturating_duration_since(t) < BUCKET_SWEEP_EVERY) {
                return false;
            }
            self.swept = Some(now);
            self.map.retain(|_, b| {
                b.refill(now, rate, burst);
                !b.is_full(burst)
            });
            if self.map.len() >= self.max {
                return false;
            }
        }
        self.map.entry(key.to_owned()).or_insert_with(|| TokenBucket::full(burst, now)).take(now, rate, burst)
    }

    /// Keys with a bucket now.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn buckets_are_bounded_and_a_full_table_is_swept_at_most_every_100_ms() {
        let t0 = Instant::now(); // test-only clock
        let mut b: Buckets<u32> = Buckets::new(10, 2, 2);
        assert!(b.take(t0, &1) && b.take(t0, &1) && !b.take(t0, &1), "a burst of 2, then the rate");
        assert!(b.take(t0, &2));
        assert!(!b.take(t0, &3), "full, and nobody idle");
        // Key 2 is full again after 100 ms (10 a second, it spent 1 of 2), but the table was
        // swept at t0: a new key waits for the next sweep.
        let t1 = t0 + Duration::from_millis(99);
        assert!(!b.take(t1, &3));
        let t2 = t0 + Duration::from_millis(150);
        assert!(b.take(t2, &3), "key 2 forgotten");
        assert_eq!(b.len(), 2);
        assert!(b.take(t2 + Duration::from_millis(100), &1), "key 1 refilled");
    }
}
