//! Handshakes under load, as WireGuard's MAC1/MAC2 and cookie replies (and QUIC's Retry).
//!
//! Every link init ends with two MACs. `mac1` is keyed by a hash of the responder's public key:
//! the responder checks it before any ECDH, so junk and inits meant for another node cost it one
//! HMAC. `mac2` is keyed by a *cookie*: 16 bytes the responder computes from a secret it rotates
//! every two minutes and the sender's transport address. While a node receives more inits than
//! [`GuardConfig::load_threshold`] per second it is *under load*: an init without a valid
//! `mac2` gets a [cookie reply](crate::wire::CookieReply) (56 bytes, smaller than the 150-byte
//! init: no amplification) and no ECDH; the initiator seals the cookie into `mac2` and sends the
//! init again, proving it receives at the address it sends from. Under load each source host
//! then has a token bucket of handshake work ([`GuardConfig::per_host_rate`]), and the node as
//! a whole never spends more than [`GuardConfig::max_per_s`] ECDHs per second on inits, so a
//! flood takes a bounded share of the CPU the links already up use. Links that are up rekey
//! inside the link (authenticated frames): none of this touches them.
//!
//! The cookie reply is sealed (ChaCha20-Poly1305) under a key derived from the responder's
//! public key and a fresh random 16-byte nonce, with the init's `mac1` as associated data: only
//! the sender of that init can use it, and a forged reply does not fit any init in flight. Each
//! reply has its own key, so no (key, nonce) pair ever repeats.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand_core::CryptoRngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::crypto::{self, hkdf, AeadKey};
use crate::identity::PublicKey;
use crate::types::Buckets;
use crate::wire::{
    self, CookieReply, COOKIE_LEN, COOKIE_NONCE_LEN, COOKIE_REPLY_LEN, HANDSHAKE_INIT_LEN, INIT_MAC1_AT, INIT_MAC2_AT,
    MAC_LEN,
};

/// How often the cookie secret changes (the previous one is still accepted).
pub const SECRET_LIFETIME: Duration = Duration::from_secs(120);
/// How long an initiator uses a cookie it was given (a little less than the responder's
/// secret lives on after replacement).
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(110);

/// A cookie: proof of receiving at one transport address.
pub type Cookie = [u8; COOKIE_LEN];

/// Limits on handshake work (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct GuardConfig {
    /// Inits per second (with a valid `mac1`) from which the node is under load and asks for
    /// cookies. 0: always ask (tests).
    pub load_threshold: u32,
    /// Handshakes per second one source host may cost while the node is under load.
    pub per_host_rate: u32,
    /// The most a source host may cost at once while the node is under load.
    pub per_host_burst: u32,
    /// Cookie replies per second (and at once) one source host gets: a flood from one host
    /// costs the node an HMAC per init, not a sealed reply each.
    pub cookies_per_host: u32,
    /// The most handshakes (ECDHs on inits) per second the node does, load or not.
    pub max_per_s: u32,
    /// Source hosts with a bucket at once; a new host beyond them waits until an idle one's
    /// bucket is full again and can be forgotten.
    pub max_hosts: usize,
    /// Links strangers' inits made that have not yet come up, kept at once: beyond, the oldest
    /// is forgotten (a flood of valid inits from fresh keys holds bounded memory). One source
    /// host keeps at most an eighth of them (beyond, its own oldest goes).
    pub max_half_open: usize,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            load_threshold: 64,
            per_host_rate: 20,
            per_host_burst: 5,
            cookies_per_host: 50,
            max_per_s: 250,
            max_hosts: 4096,
            max_half_open: 256,
        }
    }
}

/// What to do with an init whose `mac1` is valid.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Run the handshake.
    Proceed,
    /// Under load and no valid `mac2`: send this cookie reply to the sender instead.
    Cookie(Vec<u8>),
    /// Over a rate limit: drop it (counted).
    RateLimited,
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    // HMAC takes keys of any length.
    let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts any key length"),
    };
    for p in parts {
        m.update(p);
    }
    let full = m.finalize().into_bytes();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    out
}

/// The key of `mac1` for inits to `responder`.
pub fn mac1_key(responder: &PublicKey) -> [u8; 32] {
    crypto::hash(&[b"skyroute mac1", &responder.to_bytes()])
}

fn reply_key(responder: &PublicKey, nonce: &[u8; COOKIE_NONCE_LEN]) -> AeadKey {
    let base = crypto::hash(&[b"skyroute cookie", &responder.to_bytes()]);
    let [k] = hkdf::<1>(&base, nonce, b"skyroute cookie reply");
    AeadKey::new(&k)
}

/// Fills an init's `mac1` (for `responder`) and `mac2` (from `cookie`; zero without one).
pub fn seal_macs(init: &mut [u8], responder: &PublicKey, cookie: Option<&Cookie>) {
    if init.len() != HANDSHAKE_INIT_LEN {
        return;
    }
    let m1 = mac(&mac1_key(responder), &[&init[..INIT_MAC1_AT]]);
    init[INIT_MAC1_AT..INIT_MAC2_AT].copy_from_slice(&m1);
    let m2 = cookie.map_or([0u8; MAC_LEN], |c| mac(c, &[&init[..INIT_MAC2_AT]]));
    init[INIT_MAC2_AT..].copy_from_slice(&m2);
}

/// The `mac1` of an init as sent (for opening the cookie reply it may bring).
pub fn mac1_of(init: &[u8]) -> Option<[u8; MAC_LEN]> {
    init.get(INIT_MAC1_AT..INIT_MAC2_AT)?.try_into().ok()
}

/// Opens a cookie reply from `responder` to the init whose `mac1` is given.
pub fn open_reply(responder: &PublicKey, mac1: &[u8; MAC_LEN], reply: &CookieReply<'_>) -> Option<Cookie> {
    let key = reply_key(responder, reply.nonce);
    let pt = key.open_to_vec(0, mac1, reply.enc_cookie).ok()?;
    let mut c = [0u8; COOKIE_LEN];
    c.copy_from_slice(pt.get(..COOKIE_LEN)?);
    Some(c)
}

/// Counters of the guard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuardStats {
    /// Cookie replies sent.
    pub cookies_sent: u64,
    /// Inits refused for a bad `mac1`.
    pub bad_mac: u64,
    /// Inits dropped by a per-host or the node's handshake rate limit.
    pub rate_limited: u64,
    /// Links made by strangers' inits forgotten before they came up (over `max_half_open`).
    pub half_open_dropped: u64,
}

/// A node's handshake guard: its `mac1` key, cookie secrets, load estimate and buckets.
pub struct Guard {
    config: GuardConfig,
    mac1_key: [u8; 32],
    local: PublicKey,
    /// The cookie secret now and the one before (cookies from either are valid).
    secrets: [Zeroizing<[u8; 32]>; 2],
    rotated: Option<Instant>,
    /// Inits counted in the current and the previous second (the load estimate).
    window: Option<(Instant, u32, u32)>,
    hosts: Buckets<Vec<u8>>,
    cookie_hosts: Buckets<Vec<u8>>,
    /// The node's init ECDHs (a tenth of a second's worth at once).
    node_bucket: Buckets<()>,
    /// Counters.
    pub stats: GuardStats,
}

impl Guard {
    /// The guard of the node whose public key is `local`.
    pub fn new(config: GuardConfig, local: &PublicKey) -> Self {
        Guard {
            mac1_key: mac1_key(local),
            local: *local,
            secrets: [Zeroizing::new([0u8; 32]), Zeroizing::new([0u8; 32])],
            rotated: None,
            window: None,
            hosts: Buckets::new(config.per_host_rate, config.per_host_burst, config.max_hosts),
            cookie_hosts: Buckets::new(config.cookies_per_host, config.cookies_per_host, config.max_hosts),
            node_bucket: Buckets::new(config.max_per_s, (config.max_per_s / 10).max(1), 1),
            config,
            stats: GuardStats::default(),
        }
    }

    /// The guard's settings.
    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// Whether an init carries a valid `mac1` for this node (one HMAC; constant-time compare).
    pub fn mac1_ok(&mut self, init: &[u8]) -> bool {
        let ok = init.len() == HANDSHAKE_INIT_LEN
            && bool::from(mac(&self.mac1_key, &[&init[..INIT_MAC1_AT]]).ct_eq(&init[INIT_MAC1_AT..INIT_MAC2_AT]));
        if !ok {
            self.stats.bad_mac += 1;
        }
        ok
    }

    fn rotate(&mut self, now: Instant, rng: &mut dyn CryptoRngCore) {
        if self.rotated.is_some_and(|t| now.saturating_duration_since(t) < SECRET_LIFETIME) {
            return;
        }
        let mut fresh = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut fresh[..]);
        if self.rotated.is_none() {
            // The first secret: no previous one to honour.
            self.secrets[1] = fresh.clone();
        } else {
            self.secrets.swap(0, 1);
        }
        self.secrets[0] = fresh;
        self.rotated = Some(now);
    }

    fn cookie(secret: &[u8; 32], source: &[u8]) -> Cookie {
        mac(secret, &[source])
    }

    /// Counts an init (valid `mac1`) towards the load estimate; returns whether the node is
    /// under load.
    fn note_init(&mut self, now: Instant) -> bool {
        let (start, cur, prev) = self.window.unwrap_or((now, 0, 0));
        let age = now.saturating_duration_since(start);
        let (start, cur, prev) = if age >= Duration::from_secs(2) {
            (now, 0, 0)
        } else if age >= Duration::from_secs(1) {
            (start + Duration::from_secs(1), 0, cur)
        } else {
            (start, cur, prev)
        };
        let cur = cur.saturating_add(1);
        self.window = Some((start, cur, prev));
        let frac = now.saturating_duration_since(start).as_secs_f64().min(1.0);
        let estimate = f64::from(cur) + f64::from(prev) * (1.0 - frac);
        estimate > f64::from(self.config.load_threshold)
    }

    /// Decides on an init from `source` (the sender's transport address as bytes), whose
    /// `mac1` is valid; `host`: the part of the address a host's bucket is keyed by; `known`:
    /// it comes from the address of a link that is up (an existing link handshaking again
    /// needs no cookie; only the node's cap applies).
    pub fn check(
        &mut self,
        now: Instant,
        rng: &mut dyn CryptoRngCore,
        source: &[u8],
        host: &[u8],
        init: &[u8],
        known: bool,
    ) -> Verdict {
        self.rotate(now, rng);
        if self.note_init(now) && !known {
            let valid = init.len() == HANDSHAKE_INIT_LEN
                && self.secrets.iter().any(|s| {
                    let c = Self::cookie(s, source);
                    bool::from(mac(&c, &[&init[..INIT_MAC2_AT]]).ct_eq(&init[INIT_MAC2_AT..]))
                });
            if !valid {
                if !self.cookie_hosts.take(now, host) {
                    self.stats.rate_limited += 1;
                    return Verdict::RateLimited;
                }
                return match self.cookie_reply(rng, source, init) {
                    Some(r) => {
                        self.stats.cookies_sent += 1;
                        Verdict::Cookie(r)
                    }
                    None => Verdict::RateLimited,
                };
            }
            if !self.hosts.take(now, host) {
                self.stats.rate_limited += 1;
                return Verdict::RateLimited;
            }
        }
        if !self.node_bucket.take(now, &()) {
            self.stats.rate_limited += 1;
            return Verdict::RateLimited;
        }
        Verdict::Proceed
    }

    /// Source hosts with a bucket now.
    pub fn hosts_tracked(&self) -> usize {
        self.hosts.len()
    }

    fn cookie_reply(&mut self, rng: &mut dyn CryptoRngCore, source: &[u8], init: &[u8]) -> Option<Vec<u8>> {
        let mac1 = mac1_of(init)?;
        let cookie = Self::cookie(&self.secrets[0], source);
        let mut nonce = [0u8; COOKIE_NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let mut pkt = Vec::with_capacity(COOKIE_REPLY_LEN);
        pkt.extend_from_slice(&[wire::VERSION << 4 | wire::TYPE_COOKIE_REPLY, 0, 0, 0]);
        pkt.extend_from_slice(init.get(4..8)?);
        pkt.extend_from_slice(&nonce);
        reply_key(&self.local, &nonce).seal_to_vec(0, &mac1, &cookie, &mut pkt);
        debug_assert_eq!(pkt.len(), COOKIE_REPLY_LEN);
        Some(pkt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;
    use crate::noise;
    use crate::wire::Packet;
    use rand_chacha::rand_core::SeedableRng;

    /// What an initiator does with a cookie reply: `init` again with the cookie in `mac2`.
    fn echo(responder: &PublicKey, init: &[u8], reply: &[u8]) -> Vec<u8> {
        let Ok(Packet::CookieReply(r)) = Packet::parse(reply) else { panic!("not a cookie reply") };
        let cookie = open_reply(responder, &mac1_of(init).unwrap(), &r).expect("opens with the init's mac1");
        let mut with = init.to_vec();
        seal_macs(&mut with, responder, Some(&cookie));
        with
    }

    /// A seeded RNG, a responder's key and an init to it.
    fn responder(seed: u64) -> (rand_chacha::ChaCha20Rng, PublicKey, Vec<u8>) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let b = SecretKey::generate(&mut rng).public_key();
        let pkt = init_to(&mut rng, &b);
        (rng, b, pkt)
    }

    fn init_to(rng: &mut rand_chacha::ChaCha20Rng, to: &PublicKey) -> Vec<u8> {
        let a = SecretKey::generate(rng);
        let (_, mut pkt) = noise::initiate(noise::LINK_PROLOGUE, rng, &a, to, 7, 0, noise::timestamp(1));
        seal_macs(&mut pkt, to, None);
        pkt
    }

    #[test]
    fn mac1_binds_the_responder_and_the_bytes() {
        let (mut rng, b, pkt) = responder(1);
        let c = SecretKey::generate(&mut rng).public_key();
        let mut g = Guard::new(GuardConfig::default(), &b);
        assert!(g.mac1_ok(&pkt));
        let mut flipped = pkt.clone();
        flipped[50] ^= 1;
        assert!(!g.mac1_ok(&flipped));
        assert!(!g.mac1_ok(&init_to(&mut rng, &c)));
        assert!(!g.mac1_ok(&pkt[..100]));
        assert_eq!(g.stats.bad_mac, 3);
    }

    #[test]
    fn under_load_a_cookie_round_trip_proves_the_address() {
        let (mut rng, b, mut pkt) = responder(2);
        let t0 = Instant::now(); // test-only clock
        let config = GuardConfig { load_threshold: 0, ..GuardConfig::default() };
        let mut g = Guard::new(config, &b);
        let Verdict::Cookie(reply) = g.check(t0, &mut rng, b"addr-1", b"host", &pkt, false) else {
            panic!("no cookie")
        };
        assert_eq!(reply.len(), COOKIE_REPLY_LEN);
        assert!(reply.len() < pkt.len(), "a cookie reply is smaller than the init");
        let Ok(Packet::CookieReply(r)) = Packet::parse(&reply) else { panic!("unparsable reply") };
        assert_eq!(r.receiver_index, 7);
        let mac1 = mac1_of(&pkt).unwrap();
        let cookie = open_reply(&b, &mac1, &r).expect("opens with the init's mac1");
        // Another init's mac1 does not open it.
        let other = init_to(&mut rng, &b);
        assert!(open_reply(&b, &mac1_of(&other).unwrap(), &r).is_none());
        seal_macs(&mut pkt, &b, Some(&cookie));
        assert_eq!(g.check(t0, &mut rng, b"addr-1", b"host", &pkt, false), Verdict::Proceed);
        // The same cookie from another address is worth nothing.
        assert!(matches!(g.check(t0, &mut rng, b"addr-2", b"host", &pkt, false), Verdict::Cookie(_)));
        // Still valid after one rotation, not after two.
        let t1 = t0 + SECRET_LIFETIME;
        assert_eq!(g.check(t1, &mut rng, b"addr-1", b"host", &pkt, false), Verdict::Proceed);
        let t2 = t1 + SECRET_LIFETIME;
        assert!(matches!(g.check(t2, &mut rng, b"addr-1", b"host", &pkt, false), Verdict::Cookie(_)));
        // Two replies never share a key and nonce: each nonce is fresh.
        let Verdict::Cookie(r1) = g.check(t2, &mut rng, b"addr-3", b"host", &other, false) else { panic!() };
        let Verdict::Cookie(r2) = g.check(t2, &mut rng, b"addr-3", b"host", &other, false) else { panic!() };
        assert_ne!(r1[8..24], r2[8..24]);
    }

    #[test]
    fn load_threshold_host_buckets_and_node_cap() {
        let (mut rng, b, pkt) = responder(3);
        let t0 = Instant::now(); // test-only clock
        let config = GuardConfig { load_threshold: 10, per_host_burst: 3, max_per_s: 1000, ..GuardConfig::default() };
        let mut g = Guard::new(config, &b);
        // Below the threshold: no cookie asked.
        for _ in 0..10 {
            assert_eq!(g.check(t0, &mut rng, b"a", b"h", &pkt, false), Verdict::Proceed);
        }
        // Past it: cookies.
        let Verdict::Cookie(reply) = g.check(t0, &mut rng, b"a", b"h", &pkt, false) else { panic!("not under load") };
        let with = echo(&b, &pkt, &reply);
        // A host's burst, then its rate.
        let ok = (0..10).filter(|_| g.check(t0, &mut rng, b"a", b"h", &with, false) == Verdict::Proceed).count();
        assert_eq!(ok, 3);
        let later = t0 + Duration::from_millis(100);
        assert_eq!(g.check(later, &mut rng, b"a", b"h", &with, false), Verdict::Proceed, "20/s refills one in 50 ms");
        // Load ends two quiet seconds later.
        let quiet = t0 + Duration::from_secs(3);
        assert_eq!(g.check(quiet, &mut rng, b"z", b"z", &pkt, false), Verdict::Proceed);

        // The node's cap holds whatever the load.
        let config = GuardConfig { load_threshold: 1_000_000, max_per_s: 50, ..GuardConfig::default() };
        let mut g = Guard::new(config, &b);
        let ok = (0..100).filter(|_| g.check(t0, &mut rng, b"a", b"h", &pkt, false) == Verdict::Proceed).count();
        assert_eq!(ok, 5, "burst of a tenth of a second");
        assert_eq!(g.stats.rate_limited, 95);
    }

    #[test]
    fn cookie_replies_per_host_are_limited() {
        let (mut rng, b, pkt) = responder(5);
        let t0 = Instant::now(); // test-only clock
        let config = GuardConfig { load_threshold: 0, cookies_per_host: 10, ..GuardConfig::default() };
        let mut g = Guard::new(config, &b);
        let cookies =
            (0..100).filter(|_| matches!(g.check(t0, &mut rng, b"a:1", b"a", &pkt, false), Verdict::Cookie(_))).count();
        assert_eq!(cookies, 10);
        assert!(matches!(g.check(t0, &mut rng, b"b:1", b"b", &pkt, false), Verdict::Cookie(_)), "another host's own");
        let later = t0 + Duration::from_millis(100);
        assert!(matches!(g.check(later, &mut rng, b"a:2", b"a", &pkt, false), Verdict::Cookie(_)), "refilled");
    }

    proptest::proptest! {
        /// Random bytes as a cookie reply: a typed refusal, never a cookie, never a panic.
        #[test]
        fn random_cookie_replies_never_open(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80), seed in 0u64..4) {
            let (_, b, init) = responder(seed);
            let mut reply = bytes;
            if reply.len() >= 4 {
                reply[..4].copy_from_slice(&[0x14, 0, 0, 0]);
            }
            if let Ok(Packet::CookieReply(r)) = Packet::parse(&reply) {
                proptest::prop_assert!(open_reply(&b, &mac1_of(&init).unwrap(), &r).is_none());
            }
        }
    }

    #[test]
    fn host_table_is_bounded() {
        let (mut rng, b, pkt) = responder(4);
        let t0 = Instant::now(); // test-only clock
        let config = GuardConfig { load_threshold: 0, max_hosts: 8, max_per_s: 100_000, ..GuardConfig::default() };
        let mut g = Guard::new(config, &b);
        for i in 0..100u32 {
            let src = i.to_be_bytes();
            let Verdict::Cookie(reply) = g.check(t0, &mut rng, &src, &src, &pkt, false) else {
                assert!(i >= 8, "host {i} got no cookie");
                continue;
            };
            let with = echo(&b, &pkt, &reply);
            let v = g.check(t0, &mut rng, &src, &src, &with, false);
            assert_eq!(v == Verdict::Proceed, i < 8, "host {i}");
        }
        assert_eq!(g.hosts_tracked(), 8);
        // Idle hosts are forgotten once their buckets are full again.
        let later = t0 + Duration::from_secs(1);
        let src = 500u32.to_be_bytes();
        let Verdict::Cookie(reply) = g.check(later, &mut rng, &src, &src, &pkt, false) else { panic!() };
        let with = echo(&b, &pkt, &reply);
        assert_eq!(g.check(later, &mut rng, &src, &src, &with, false), Verdict::Proceed);
        assert_eq!(g.hosts_tracked(), 1);
    }
}
