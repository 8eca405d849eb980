//! The gateway's side of the VPN: who may connect, which address each client key gets, and
//! which packets may leave or reach a client.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{ip, ip6};
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
    /// The IPv6 client pool (a ULA /64 by default in the node's configuration); the first
    /// address after the prefix (`::1`) is the gateway's. None: the gateway carries no IPv6,
    /// and clients answer their applications' IPv6 with "unreachable" themselves.
    pub pool6: Option<(Ipv6Addr, u8)>,
    /// IPv6 networks clients must not reach.
    pub blocked6: Vec<(Ipv6Addr, u8)>,
    /// DNS servers clients should use (reached through the tunnel); at most 4 are sent.
    pub dns: Vec<IpAddr>,
}

impl GatewayConfig {
    /// The gateway's own IPv6 address: the pool's `::1`, when there is a pool.
    pub fn address6(&self) -> Option<Ipv6Addr> {
        self.pool6.map(|(net, len)| Ipv6Addr::from((u128::from(net) & prefix_mask(len)) + 1))
    }
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
    #[error("this gateway carries no IPv6")]
    /// An IPv6 packet, and the gateway has no IPv6 pool.
    NoIpv6,
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
    addr6: Option<Ipv6Addr>,
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
    /// The IPv6 side, when the gateway carries IPv6.
    pub v6: Option<Assignment6>,
    /// DNS servers to use inside the tunnel (the gateway's offer).
    pub dns: Vec<IpAddr>,
}

/// The IPv6 part of an assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment6 {
    /// The client's IPv6 address (stable per client key).
    pub address: Ipv6Addr,
    /// The pool's prefix length.
    pub prefix_len: u8,
    /// The gateway's own IPv6 address in the pool.
    pub gateway: Ipv6Addr,
}

/// The gateway side of the VPN (sans-IO): admission, addresses, checks and counters.
pub struct Gateway {
    config: GatewayConfig,
    clients: BTreeMap<PublicKey, Client>,
    by_addr: BTreeMap<Ipv4Addr, PublicKey>,
    by_addr6: BTreeMap<Ipv6Addr, PublicKey>,
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
        Gateway { config, clients: BTreeMap::new(), by_addr: BTreeMap::new(), by_addr6: BTreeMap::new(), refused: 0 }
    }

    /// The gateway's own address in the pool (the first host address).
    pub fn address(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.config.pool) + 1)
    }

    /// The gateway's own IPv6 address (the pool's `::1`), when it carries IPv6.
    pub fn address6(&self) -> Option<Ipv6Addr> {
        self.config.address6()
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
        let (gateway6, prefix6_len) = (self.address6(), self.config.pool6.map_or(0, |p| p.1));
        // IPv6 servers only for clients that get IPv6.
        let dns: Vec<IpAddr> =
            self.config.dns.iter().filter(|a| a.is_ipv4() || gateway6.is_some()).take(4).copied().collect();
        let assignment = move |address, address6: Option<Ipv6Addr>| Assignment {
            address,
            prefix_len,
            gateway,
            mtu,
            v6: address6.zip(gateway6).map(|(address, gateway)| Assignment6 {
                address,
                prefix_len: prefix6_len,
                gateway,
            }),
            dns: dns.clone(),
        };
        if let Some(c) = self.clients.get(key) {
            return Ok(assignment(c.addr, c.addr6));
        }
        let host_bits = 32 - self.config.prefix_len.min(30) as u32;
        let hosts = (1u64 << host_bits) - 3; // minus network, gateway, broadcast
        let base = u32::from(self.config.pool) & !((1u64 << host_bits) - 1) as u32;
        let h = Sha256::digest(key.to_bytes());
        let start = u64::from_be_bytes(h[..8].try_into().unwrap_or_default()) % hosts;
        for i in 0..hosts.min(1 << 20) {
            let addr = Ipv4Addr::from(base + 2 + ((start + i) % hosts) as u32);
            if !self.by_addr.contains_key(&addr) {
                let addr6 = self.config.pool6.and_then(|(net, len)| self.free_address6(&h, net, len));
                let burst = self.config.rate_limit.unwrap_or(0) as f64;
                self.clients
                    .insert(*key, Client { addr, addr6, stats: ClientStats::default(), tokens: burst, filled: now });
                self.by_addr.insert(addr, *key);
                if let Some(a6) = addr6 {
                    self.by_addr6.insert(a6, *key);
                }
                return Ok(assignment(addr, addr6));
            }
        }
        self.refused += 1;
        Err(Refusal::PoolFull)
    }

    /// A free IPv6 address in `net/len` for the key whose hash is `h`: the interface id is
    /// taken from the hash (stable per key), skipping the prefix itself, the gateway's `::1`
    /// and addresses taken.
    fn free_address6(&self, h: &[u8], net: Ipv6Addr, len: u8) -> Option<Ipv6Addr> {
        let mask = prefix_mask(len);
        let base = u128::from(net) & mask;
        let mut id = [0u8; 16];
        id.copy_from_slice(&h[16..32]);
        let start = u128::from_be_bytes(id);
        (0..1024u128).map(|i| base | (start.wrapping_add(i) & !mask)).map(Ipv6Addr::from).find(|a| {
            let host = u128::from(*a) & !mask;
            host > 1 && !self.by_addr6.contains_key(a)
        })
    }

    /// Forgets a client: its address is free for others after this, and its counters are gone.
    /// (A client whose session ends is kept: it comes back to the same address, and its
    /// counters are the payment records.)
    pub fn remove(&mut self, key: &PublicKey) {
        if let Some(c) = self.clients.remove(key) {
            self.by_addr.remove(&c.addr);
            if let Some(a6) = c.addr6 {
                self.by_addr6.remove(&a6);
            }
        }
    }

    /// A packet from a client: whether it may go out (to the gateway's uplink).
    pub fn from_client(&mut self, now: Instant, key: &PublicKey, packet: &[u8]) -> Result<(), Drop> {
        if ip6::version(packet) == Some(6) {
            return self.from_client6(now, key, packet);
        }
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

    /// An IPv6 packet from a client: the same checks as IPv4 (its address, forbidden
    /// destinations, the rate), plus addresses that are never routed (link-local, multicast).
    fn from_client6(&mut self, now: Instant, key: &PublicKey, packet: &[u8]) -> Result<(), Drop> {
        let gw6 = self.address6();
        let Gateway { config, clients, .. } = self;
        let client = clients.get_mut(key).ok_or(Drop::NoAddress)?;
        let (Some(addr6), Some((pool6, plen6)), Some(gw6)) = (client.addr6, config.pool6, gw6) else {
            client.stats.dropped_forbidden += 1;
            return Err(Drop::NoIpv6);
        };
        let hdr = match ip6::parse(packet) {
            Ok(h) => h,
            Err(_) => {
                client.stats.dropped_malformed += 1;
                return Err(Drop::Malformed);
            }
        };
        if hdr.src != addr6 {
            client.stats.dropped_spoofed += 1;
            return Err(Drop::Spoofed);
        }
        let to_pool = ip6::in_net(hdr.dst, pool6, plen6) && !config.client_to_client;
        if to_pool
            || hdr.dst == gw6
            || !ip6::is_routable(hdr.dst)
            || config.blocked6.iter().any(|(n, l)| ip6::in_net(hdr.dst, *n, *l))
        {
            client.stats.dropped_forbidden += 1;
            return Err(Drop::Forbidden);
        }
        if !take_tokens(client, config.rate_limit, now, packet.len()) {
            client.stats.dropped_rate += 1;
            return Err(Drop::RateLimited);
        }
        client.stats.packets_up += 1;
        client.stats.bytes_up += packet.len() as u64;
        Ok(())
    }

    /// A packet from the uplink: the client it is for, if any.
    pub fn to_client(&mut self, now: Instant, packet: &[u8]) -> Result<PublicKey, Drop> {
        let key = if ip6::version(packet) == Some(6) {
            let hdr = ip6::parse(packet).map_err(|_| Drop::Malformed)?;
            *self.by_addr6.get(&hdr.dst).ok_or(Drop::NoAddress)?
        } else {
            let hdr = ip::parse(packet).map_err(|_| Drop::Malformed)?;
            *self.by_addr.get(&hdr.dst).ok_or(Drop::NoAddress)?
        };
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

    /// The IPv6 address of client `key`, if it has one.
    pub fn client_address6(&self, key: &PublicKey) -> Option<Ipv6Addr> {
        self.clients.get(key).and_then(|c| c.addr6)
    }

    /// Each client's key, address and counters.
    pub fn stats(&self) -> impl Iterator<Item = (&PublicKey, Ipv4Addr, &ClientStats)> {
        self.clients.iter().map(|(k, c)| (k, c.addr, &c.stats))
    }
}

/// The network mask of a /`len` IPv6 prefix.
fn prefix_mask(len: u8) -> u128 {
    let len = len.min(128) as u32;
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
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
