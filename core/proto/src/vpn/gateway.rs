//! The gateway's side of the VPN: who may connect, which address each client key gets, and
//! which packets may leave or reach a client.

use core::net::Ipv4Addr;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::ip;
use crate::identity::PublicKey;

/// Who may use the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Any key (an explicit choice in the configuration).
    Open,
    /// Only these client keys.
    Keys(BTreeSet<PublicKey>),
}

#[derive(Debug, Clone)]
/// The gateway's settings.
pub struct GatewayConfig {
    /// Who may use the gateway.
    pub access: Access,
    /// The client address pool, e.g. 10.77.0.0/16. The first host address is the gateway's.
    pub pool: Ipv4Addr,
    /// The pool's prefix length.
    pub prefix_len: u8,
    /// Bytes per second per client, both directions together; `None`: unlimited.
    pub rate_limit: Option<u64>,
    /// Let clients reach each other (off by default).
    pub client_to_client: bool,
    /// Networks clients must not reach (the gateway host's own networks, unless configured).
    pub blocked: Vec<(Ipv4Addr, u8)>,
    /// MTU offered to clients.
    pub mtu: u16,
}

/// Why a client may not use the gateway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this key is not on the gateway's allow-list")]
    /// The key is not allowed.
    NotAllowed,
    #[error("the address pool is full")]
    /// No free address in the pool.
    PoolFull,
}

/// Why a packet was dropped (counted per client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Drop {
    #[error("not a valid IPv4 packet")]
    /// Not a valid IPv4 packet.
    Malformed,
    #[error("source address is not the one assigned to this key")]
    /// The source is not the client's address.
    Spoofed,
    #[error("destination not allowed")]
    /// A destination clients may not reach.
    Forbidden,
    #[error("over the rate limit")]
    /// Over the client's rate limit.
    RateLimited,
    #[error("no address assigned to this key")]
    /// The client has no address.
    NoAddress,
}

/// Per-client counters: the future payment records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Bytes from the client to the internet.
    pub bytes_up: u64,
    /// Bytes from the internet to the client.
    pub bytes_down: u64,
    /// Packets from the client.
    pub packets_up: u64,
    /// Packets to the client.
    pub packets_down: u64,
    /// Packets dropped for a forged source address.
    pub dropped_spoofed: u64,
    /// Packets dropped for a forbidden destination.
    pub dropped_forbidden: u64,
    /// Packets dropped over the rate limit.
    pub dropped_rate: u64,
    /// Packets dropped as malformed.
    pub dropped_malformed: u64,
}

struct Client {
    addr: Ipv4Addr,
    stats: ClientStats,
    /// Token bucket: bytes available, and when it was last filled.
    tokens: f64,
    filled: Instant,
}

/// What a client is told when it is admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The client's address.
    pub address: Ipv4Addr,
    /// The pool's prefix length.
    pub prefix_len: u8,
    /// The gateway's own address (the pool's first).
    pub gateway: Ipv4Addr,
    /// The tunnel MTU.
    pub mtu: u16,
}

/// The gateway side of the VPN (sans-IO): admission, addresses, checks and counters.
pub struct Gateway {
    config: GatewayConfig,
    clients: BTreeMap<PublicKey, Client>,
    by_addr: BTreeMap<Ipv4Addr, PublicKey>,
    /// Hellos refused (keys not allowed, pool full).
    pub refused: u64,
}

fn in_net(a: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len.min(32)) };
    u32::from(a) & mask == u32::from(net) & mask
}

impl Gateway {
    /// A gateway with `config` and no clients.
    pub fn new(config: GatewayConfig) -> Self {
        Gateway { config, clients: BTreeMap::new(), by_addr: BTreeMap::new(), refused: 0 }
    }

    /// The gateway's own address in the pool (the first host address).
    pub fn address(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.config.pool) + 1)
    }

    /// The gateway's settings.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// A client asks for an address. The address is derived from the key's hash, so a client
    /// gets the same one every time (and after a gateway restart) unless it collides.
    pub fn hello(&mut self, now: Instant, key: &PublicKey) -> Result<Assignment, Refusal> {
        if let Access::Keys(allowed) = &self.config.access {
            if !allowed.contains(key) {
                self.refused += 1;
                return Err(Refusal::NotAllowed);
            }
        }
        let (prefix_len, gateway, mtu) = (self.config.prefix_len, self.address(), self.config.mtu);
        let assignment = move |address| Assignment { address, prefix_len, gateway, mtu };
        if let Some(c) = self.clients.get(key) {
            return Ok(assignment(c.addr));
        }
        let host_bits = 32 - self.config.prefix_len.min(30) as u32;
        let hosts = (1u64 << host_bits) - 3; // minus network, gateway, broadcast
        let base = u32::from(self.config.pool) & !((1u64 << host_bits) - 1) as u32;
        let h = Sha256::digest(key.to_bytes());
        let start = u64::from_be_bytes(h[..8].try_into().unwrap_or_default()) % hosts;
        for i in 0..hosts.min(1 << 20) {
            let addr = Ipv4Addr::from(base + 2 + ((start + i) % hosts) as u32);
            if !self.by_addr.contains_key(&addr) {
                let burst = self.config.rate_limit.unwrap_or(0) as f64;
                self.clients.insert(*key, Client { addr, stats: ClientStats::default(), tokens: burst, filled: now });
                self.by_addr.insert(addr, *key);
                return Ok(assignment(addr));
            }
        }
        self.refused += 1;
        Err(Refusal::PoolFull)
    }

    /// Forgets a client: its address is free for others after this, and its counters are gone.
    /// (A client whose session ends is kept: it comes back to the same address, and its
    /// counters are the payment records.)
    pub fn remove(&mut self, key: &PublicKey) {
        if let Some(c) = self.clients.remove(key) {
            self.by_addr.remove(&c.addr);
        }
    }

    /// A packet from a client: whether it may go out (to the gateway's uplink).
    pub fn from_client(&mut self, now: Instant, key: &PublicKey, packet: &[u8]) -> Result<(), Drop> {
        let gw = self.address();
        let Gateway { config, clients, .. } = self;
        let (c2c, blocked, rate, pool, plen) =
            (config.client_to_client, &config.blocked, config.rate_limit, config.pool, config.prefix_len);
        let client = clients.get_mut(key).ok_or(Drop::NoAddress)?;
        let hdr = match ip::parse(packet) {
            Ok(h) => h,
            Err(_) => {
                client.stats.dropped_malformed += 1;
                return Err(Drop::Malformed);
            }
        };
        if hdr.src != client.addr {
            client.stats.dropped_spoofed += 1;
            return Err(Drop::Spoofed);
        }
        let to_pool = in_net(hdr.dst, pool, plen) && !c2c;
        if to_pool || hdr.dst == gw || blocked.iter().any(|(n, l)| in_net(hdr.dst, *n, *l)) {
            client.stats.dropped_forbidden += 1;
            return Err(Drop::Forbidden);
        }
        if !take_tokens(client, rate, now, packet.len()) {
            client.stats.dropped_rate += 1;
            return Err(Drop::RateLimited);
        }
        client.stats.packets_up += 1;
        client.stats.bytes_up += packet.len() as u64;
        Ok(())
    }

    /// A packet from the uplink: the client it is for, if any.
    pub fn to_client(&mut self, now: Instant, packet: &[u8]) -> Result<PublicKey, Drop> {
        let hdr = ip::parse(packet).map_err(|_| Drop::Malformed)?;
        let key = *self.by_addr.get(&hdr.dst).ok_or(Drop::NoAddress)?;
        let rate = self.config.rate_limit;
        let client = self.clients.get_mut(&key).ok_or(Drop::NoAddress)?;
        if !take_tokens(client, rate, now, packet.len()) {
            client.stats.dropped_rate += 1;
            return Err(Drop::RateLimited);
        }
        client.stats.packets_down += 1;
        client.stats.bytes_down += packet.len() as u64;
        Ok(key)
    }

    /// Each client's key, address and counters.
    pub fn stats(&self) -> impl Iterator<Item = (&PublicKey, Ipv4Addr, &ClientStats)> {
        self.clients.iter().map(|(k, c)| (k, c.addr, &c.stats))
    }
}

/// Token bucket with one second of burst.
fn take_tokens(c: &mut Client, rate: Option<u64>, now: Instant, n: usize) -> bool {
    let Some(rate) = rate else { return true };
    let elapsed = now.saturating_duration_since(c.filled).min(Duration::from_secs(1));
    c.tokens = (c.tokens + elapsed.as_secs_f64() * rate as f64).min(rate as f64);
    c.filled = now;
    if c.tokens < n as f64 {
        return false;
    }
    c.tokens -= n as f64;
    true
}
