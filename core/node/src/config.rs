//! The node's TOML configuration. Every field is optional; a bad one is reported in one line
//! that names it.
//!
//! ```toml
//! [listen]                        # each "addr:port" or "off"; default: 0.0.0.0 on the
//! udp = "127.0.0.1:7070"          # default port (UDP and TCP 7070, QUIC 7071), or the
//! tcp = "127.0.0.1:7070"          # next free one
//! quic = "off"
//! interfaces = ["wlan0", "wwan0"] # sockets bound to each, peers dialled over each
//!                                 # (a link per interface; [] = none, one unbound socket)
//!                                 # [every up interface with a default route, if two or more]
//! [[peers]]                       # static neighbours, dialled and kept up
//! key = "02ab...33 bytes hex"
//! addr = "192.0.2.1:7070"         # UDP; or "tcp://192.0.2.1:7070", "quic://192.0.2.1:7071"
//! [[topology]]                    # links between other nodes, for route finding (until
//! a = "02ab..."                   # discovery lands)
//! b = "03cd..."
//! [session]
//! routes = 3                      # disjoint routes per session
//! realtime_copies = 3             # copies of each deadline datagram
//! bulk_on_metered = true          # bulk may use routes over metered (cellular) interfaces
//!                                 # while an unmetered one works [true]
//! [link]
//! keepalive_s = 0                 # keepalive when nothing was sent this long, 0 = off [0];
//!                                 # 25 for a node behind NAT that peers must reach while idle
//! key_max_age_s = 120             # a key older than this never sends: handshake again [120]
//! [log]
//! level = "info"                  # tracing filter; RUST_LOG overrides it
//! [forward]
//! route_buffer_bytes = 1048576
//! memory_budget_bytes = 536870912
//! max_in_flight = 256             # unacknowledged datagrams per link
//! congestion_window = false       # links keep ~2x their bandwidth-delay product in flight:
//!                                 # for cellular links with deep drop-tail queues [false]
//! [guard]                         # a hostile network (WIRE.md, docs/measurements.md)
//! load_threshold = 64             # inits a second from which inits need a cookie (0: all) [64]
//! handshakes_per_host_s = 20      # under load: handshakes one IPv4 host or IPv6 /64 may cost [20]
//! cookies_per_host_s = 50         # under load: cookie replies one host gets a second [50]
//! handshakes_per_s = 250          # init ECDHs a second, load or not [250]
//! max_half_open = 256             # strangers' links not yet up, kept at once (a host: 1/8) [256]
//! route_setups_per_s = 500        # route setups one neighbour may ask a second [500]
//! [gateway]                       # serve as an IPv4 gateway (VPN exit); needs root
//! allow = ["02ab..."]             # client keys allowed; or `open = true` for any key
//! pool = "10.77.0.0/16"           # client addresses (stable per key); the first is ours
//! uplink = "eth0"                 # NAT out of this interface [default: any but the TUN]
//! tun = "skygw0"                  # the gateway's TUN device
//! rate_limit = 1250000            # bytes/s per client, both directions [default: none]
//! client_to_client = false        # clients may reach each other
//! reach_host = false              # clients may reach this host's own addresses
//! blocked = ["192.168.0.0/16"]    # destinations clients may not reach
//! mtu = 1420                      # tunnel MTU offered (clients take the smaller of it
//!                                 # and 9000)
//! nat = true                      # set up nftables masquerade (false: route the pool
//!                                 # yourself)
//! [discovery]
//! announce = true                 # sign our links for neighbours, learn routes from theirs
//! dht = true                      # publish our record in the DHT, run and answer lookups
//! services = ["chain-x"]          # services published with it (found by service:NAME)
//! advertise = ["udp://203.0.113.5:7070"]  # addresses others dial [the listen addresses]
//! guards = ["02ab..."]            # reach us only through these nodes; publish no address
//! [accounting]
//! price_per_mib = 300             # as a relay: charge per MiB carried [0: free]
//! max_price_per_mib = 1000        # as a source: pay hops up to this [1000]
//! pay = true                      # as a source: pay hops' claims at all [true]
//! interval_ms = 1000              # a relay claims this often
//! allowance_bytes = 4194304       # unpaid bytes a relay tolerates...
//! grace_ms = 10000                # ...for this long, then applies the policy
//! policy = "throttle"             # "ignore", "throttle" or "drop" an unpaid route
//! escrow = "127.0.0.1:7480"       # settle receipts there (skyroute escrow)
//! account = "..."                 # our escrow account: credited as a relay, debited as
//! secret = "..."                  # a source (whose route keys it authorises: needs secret)
//! ```

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use skyroute_proto::{NodeConfig, PublicKey, SessionConfig};

use crate::transport::Addr;

/// The default UDP and TCP port; the daemon tries the next ones when it is taken.
pub const DEFAULT_PORT: u16 = 7070;
/// The default QUIC (UDP) port.
pub const DEFAULT_QUIC_PORT: u16 = 7071;

/// Unacknowledged datagrams per link on real sockets. The driver does not pace yet, and a
/// sender that may keep thousands in flight overruns socket buffers and then resends them all;
/// 256 full datagrams per round trip is about 37 MB/s at 10 ms.
pub const REAL_MAX_IN_FLIGHT: usize = 256;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    peers: Vec<RawPeer>,
    #[serde(default)]
    topology: Vec<RawEdge>,
    #[serde(default)]
    forward: RawForward,
    #[serde(default)]
    guard: RawGuard,
    #[serde(default)]
    link: RawLink,
    #[serde(default)]
    session: RawSession,
    #[serde(default)]
    log: RawLog,
    gateway: Option<RawGateway>,
    #[serde(default)]
    discovery: RawDiscovery,
    #[serde(default)]
    accounting: RawAccounting,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccounting {
    price_per_mib: Option<u32>,
    max_price_per_mib: Option<u32>,
    pay: Option<bool>,
    interval_ms: Option<u64>,
    allowance_bytes: Option<u64>,
    grace_ms: Option<u64>,
    policy: Option<String>,
    escrow: Option<String>,
    account: Option<String>,
    secret: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiscovery {
    #[serde(default)]
    announce: bool,
    #[serde(default)]
    dht: bool,
    #[serde(default)]
    services: Vec<String>,
    #[serde(default)]
    advertise: Vec<String>,
    #[serde(default)]
    guards: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    open: bool,
    pool: Option<String>,
    uplink: Option<String>,
    tun: Option<String>,
    rate_limit: Option<u64>,
    #[serde(default)]
    client_to_client: bool,
    #[serde(default)]
    reach_host: bool,
    #[serde(default)]
    blocked: Vec<String>,
    pool6: Option<String>,
    #[serde(default)]
    blocked6: Vec<String>,
    dns: Option<Vec<String>>,
    mtu: Option<u16>,
    nat: Option<bool>,
}

/// The gateway's IPv6 pool as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool6 {
    /// A ULA /64 derived from the gateway's key (stable across restarts): the default (none
    /// on a host whose kernel has IPv6 off).
    Auto,
    /// No IPv6 for clients: they answer their applications' IPv6 with "unreachable".
    Off,
    /// This prefix.
    Net(std::net::Ipv6Addr, u8),
}

/// How the node serves as an IPv4 gateway.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// Admission, pool, rate limit, forbidden destinations, MTU.
    pub service: skyroute_proto::vpn::GatewayConfig,
    /// The interface clients' packets leave through (NAT); None: the default route's.
    pub uplink: Option<String>,
    /// The gateway's TUN device.
    pub tun: String,
    /// Let clients reach the gateway host itself.
    pub reach_host: bool,
    /// Set up NAT (nftables masquerade); off when the host routes the pool itself.
    pub nat: bool,
    /// The IPv6 pool (`service.pool6` is filled from it by [`Gateway::service_for`]).
    pub pool6: Pool6,
}

impl Gateway {
    /// The gateway service for the node with `key`: the configured settings with the IPv6
    /// pool resolved (`auto`: `fd` + 40 bits of the key's hash + subnet 0, a /64, the RFC 4193
    /// way to pick a ULA, so a gateway keeps its pool across restarts).
    pub fn service_for(&self, key: &PublicKey) -> skyroute_proto::vpn::GatewayConfig {
        use sha2::{Digest, Sha256};
        let mut service = self.service.clone();
        service.pool6 = match self.pool6 {
            Pool6::Off => None,
            Pool6::Net(a, l) => Some((a, l)),
            // A host whose kernel has IPv6 off gets no pool (its uplink could not carry it).
            Pool6::Auto if !host_has_ipv6() => None,
            Pool6::Auto => {
                let h = Sha256::digest(key.to_bytes());
                let mut b = [0u8; 16];
                b[0] = 0xfd;
                b[1..6].copy_from_slice(&h[..5]);
                Some((std::net::Ipv6Addr::from(b), 64))
            }
        };
        service
    }
}

/// Whether this host's kernel runs IPv6 (on Linux: `/proc/sys/net/ipv6` exists).
fn host_has_ipv6() -> bool {
    !cfg!(target_os = "linux") || std::path::Path::new("/proc/sys/net/ipv6/conf/all").exists()
}

/// The default client address pool.
pub const DEFAULT_POOL: &str = "10.77.0.0/16";
/// The default TUN device of a gateway.
pub const DEFAULT_GATEWAY_TUN: &str = "skygw0";
/// The DNS servers a gateway offers when its configuration names none: public resolvers,
/// which clients reach through the tunnel (so their queries leave from the gateway).
pub const DEFAULT_DNS: [&str; 2] = ["1.1.1.1", "2606:4700:4700::1111"];

/// The default tunnel MTU a gateway offers: WireGuard's, which fits a 1500-byte underlay
/// under IPv6 for WireGuard. Ours is not bound by the underlay's datagram: packets over the
/// realtime size ride the session's coded stream, packed back to back into symbols.
pub const DEFAULT_TUNNEL_MTU: u16 = 1420;

/// A name that is not a Linux interface name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an interface name (1-15 characters, no '/', quotes or spaces): {0:?}")]
pub struct IfNameError(pub String);

/// A Linux interface name: 1 to 15 characters, no '/' or whitespace.
pub fn check_ifname(name: &str) -> Result<(), IfNameError> {
    if name.is_empty() || name.len() > 15 || name.chars().any(|c| c == '/' || c.is_whitespace() || c == '"') {
        return Err(IfNameError(name.to_string()));
    }
    Ok(())
}

fn gateway(raw: &RawGateway) -> Result<Gateway, ConfigError> {
    use skyroute_proto::vpn::{Access, GatewayConfig};
    let access = match (raw.open, raw.allow.is_empty()) {
        (true, true) => Access::Open,
        (true, false) => return Err(field("gateway.open", "give either `open = true` or an `allow` list, not both")),
        (false, true) => {
            return Err(field("gateway.allow", "list the client keys allowed (or set `open = true` for any key)"))
        }
        (false, false) => Access::Keys(
            raw.allow
                .iter()
                .enumerate()
                .map(|(i, k)| key(format!("gateway.allow[{i}]"), k))
                .collect::<Result<_, _>>()?,
        ),
    };
    let (pool, prefix_len) = crate::netconf::parse_prefix(raw.pool.as_deref().unwrap_or(DEFAULT_POOL))
        .map_err(|e| field("gateway.pool", e.to_string()))?;
    if !(8..=30).contains(&prefix_len) {
        return Err(field("gateway.pool", "the prefix length must be between 8 and 30"));
    }
    let blocked = each("gateway.blocked", &raw.blocked, crate::netconf::parse_prefix)?;
    let pool6 = match raw.pool6.as_deref() {
        None | Some("auto") => Pool6::Auto,
        Some("off") => Pool6::Off,
        Some(p) => {
            let (a, l) = crate::netconf::parse_prefix6(p).map_err(|e| field("gateway.pool6", e.to_string()))?;
            if !(48..=120).contains(&l) {
                return Err(field("gateway.pool6", "the prefix length must be between 48 and 120"));
            }
            Pool6::Net(a, l)
        }
    };
    let blocked6 = each("gateway.blocked6", &raw.blocked6, crate::netconf::parse_prefix6)?;
    let dns = match &raw.dns {
        None => DEFAULT_DNS.iter().map(|d| d.parse().map_err(|_| field("gateway.dns", "bad default"))).collect(),
        Some(list) if list.len() > 4 => Err(field("gateway.dns", "at most 4 servers")),
        Some(list) => each("gateway.dns", list, |d| d.parse().map_err(|_| format!("not an IP address: {d:?}"))),
    }?;
    let mtu = raw.mtu.unwrap_or(DEFAULT_TUNNEL_MTU);
    if !(576..=9000).contains(&mtu) {
        return Err(field("gateway.mtu", "must be between 576 and 9000"));
    }
    if raw.rate_limit == Some(0) {
        return Err(field("gateway.rate_limit", "must be above 0 (leave it out for no limit)"));
    }
    let tun = raw.tun.clone().unwrap_or_else(|| DEFAULT_GATEWAY_TUN.into());
    check_ifname(&tun).map_err(|e| field("gateway.tun", e.to_string()))?;
    if let Some(u) = &raw.uplink {
        check_ifname(u).map_err(|e| field("gateway.uplink", e.to_string()))?;
    }
    Ok(Gateway {
        service: GatewayConfig {
            access,
            pool,
            prefix_len,
            rate_limit: raw.rate_limit,
            client_to_client: raw.client_to_client,
            blocked,
            mtu,
            pool6: None,
            blocked6,
            dns,
        },
        uplink: raw.uplink.clone(),
        tun,
        reach_host: raw.reach_host,
        nat: raw.nat.unwrap_or(true),
        pool6,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    udp: Option<String>,
    tcp: Option<String>,
    quic: Option<String>,
    interfaces: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdge {
    a: String,
    b: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    routes: Option<usize>,
    realtime_copies: Option<usize>,
    bulk_on_metered: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    key: String,
    addr: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    keepalive_s: Option<u64>,
    key_max_age_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    route_buffer_bytes: Option<usize>,
    realtime_buffer_bytes: Option<usize>,
    memory_budget_bytes: Option<usize>,
    max_in_flight: Option<usize>,
    congestion_window: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuard {
    load_threshold: Option<u32>,
    handshakes_per_host_s: Option<u32>,
    cookies_per_host_s: Option<u32>,
    handshakes_per_s: Option<u32>,
    max_half_open: Option<usize>,
    route_setups_per_s: Option<u32>,
}

/// A static neighbour.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The neighbour's key.
    pub key: PublicKey,
    /// Where it listens.
    pub addr: Addr,
}

/// Where one transport listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// The default port on all interfaces, or the next free one.
    Default,
    /// Not listening.
    Off,
    /// This address and port.
    At(SocketAddr),
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The UDP listener.
    pub udp: Bind,
    /// The TCP listener.
    pub tcp: Bind,
    /// The QUIC listener.
    pub quic: Bind,
    /// Which interfaces get a bound UDP socket (`[listen] interfaces`).
    pub interfaces: crate::transport::iface::Policy,
    /// Static neighbours, dialled at start.
    pub peers: Vec<Peer>,
    /// Links between other nodes that route finding may use (until discovery).
    pub topology: Vec<(PublicKey, PublicKey)>,
    /// Link, route and store-and-forward settings.
    pub node: NodeConfig,
    /// Session settings.
    pub session: SessionConfig,
    /// A tracing filter (`RUST_LOG` syntax).
    pub log: Option<String>,
    /// Serve as an IPv4 gateway (`[gateway]`).
    pub gateway: Option<Gateway>,
    /// Announce links to neighbours and learn routes from theirs.
    pub discovery: bool,
    /// Take part in the DHT (`[discovery] dht = true`), publishing these services.
    pub dht: Option<crate::driver::DhtOptions>,
    /// Settle payments at an escrow (`[accounting] escrow`).
    pub escrow: Option<crate::driver::EscrowOptions>,
}

/// The node settings for real sockets.
pub fn real_node_config() -> NodeConfig {
    let mut node = NodeConfig::default();
    node.forward.max_in_flight = REAL_MAX_IN_FLIGHT;
    node
}

fn bind(field_name: &str, v: &Option<String>) -> Result<Bind, ConfigError> {
    match v.as_deref() {
        None => Ok(Bind::Default),
        Some("off") => Ok(Bind::Off),
        Some(a) => a
            .parse()
            .map(Bind::At)
            .map_err(|_| field(field_name, format!("not an address and port (or \"off\"): {a:?}"))),
    }
}

fn key(field_name: String, v: &str) -> Result<PublicKey, ConfigError> {
    PublicKey::from_hex(v).map_err(|_| field(field_name, "not a compressed secp256k1 public key (66 hex digits)"))
}

/// `[accounting]` into the node's payment settings, and where to settle.
fn accounting(
    raw: &RawAccounting,
    a: &mut skyroute_proto::AccountingConfig,
) -> Result<Option<crate::driver::EscrowOptions>, ConfigError> {
    use skyroute_proto::accounting::Policy;
    if let Some(v) = raw.price_per_mib {
        a.price_per_mib = v;
    }
    if let Some(v) = raw.max_price_per_mib {
        a.max_price_per_mib = Some(v);
    }
    if raw.pay == Some(false) {
        a.max_price_per_mib = None;
    }
    if let Some(v) = raw.interval_ms {
        if !(100..=3_600_000).contains(&v) {
            return Err(field("accounting.interval_ms", "must be between 100 and 3600000"));
        }
        a.interval = std::time::Duration::from_millis(v);
    }
    if let Some(v) = raw.allowance_bytes {
        a.allowance = v;
    }
    if let Some(v) = raw.grace_ms {
        if v > 86_400_000 {
            return Err(field("accounting.grace_ms", "at most a day (86400000)"));
        }
        a.grace = std::time::Duration::from_millis(v);
    }
    if let Some(p) = &raw.policy {
        a.policy = match p.as_str() {
            "ignore" => Policy::Ignore,
            "throttle" => Policy::Throttle,
            "drop" => Policy::Drop,
            _ => return Err(field("accounting.policy", format!("\"ignore\", \"throttle\" or \"drop\", not {p:?}"))),
        };
    }
    let Some(addr) = &raw.escrow else {
        if raw.account.is_some() || raw.secret.is_some() {
            return Err(field("accounting.escrow", "account and secret need an escrow address"));
        }
        return Ok(None);
    };
    let addr = addr.parse().map_err(|_| field("accounting.escrow", format!("not an address and port: {addr:?}")))?;
    let hex_field = |name: &str, v: &Option<String>| -> Result<Option<String>, ConfigError> {
        match v {
            Some(x) if x.is_empty() || !x.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Err(field(format!("accounting.{name}"), "hex digits, as `skyroute escrow` gave them"))
            }
            v => Ok(v.clone()),
        }
    };
    let account = hex_field("account", &raw.account)?
        .ok_or_else(|| field("accounting.account", "an escrow needs the account to credit or debit"))?;
    Ok(Some(crate::driver::EscrowOptions { addr, account, secret: hex_field("secret", &raw.secret)? }))
}

fn dht_options(d: &RawDiscovery) -> Result<Option<crate::driver::DhtOptions>, ConfigError> {
    use skyroute_proto::dht::record::{MAX_ADDRS, MAX_ADDR_LEN, MAX_SERVICES};
    if !d.dht {
        if !d.services.is_empty() || !d.advertise.is_empty() || !d.guards.is_empty() {
            return Err(field("discovery.dht", "services, advertise and guards need dht = true"));
        }
        return Ok(None);
    }
    if d.services.len() > MAX_SERVICES {
        return Err(field("discovery.services", format!("at most {MAX_SERVICES} services")));
    }
    if let Some(i) = d.services.iter().position(|s| s.is_empty()) {
        return Err(field(format!("discovery.services[{i}]"), "empty service name"));
    }
    if d.advertise.len() > MAX_ADDRS {
        return Err(field("discovery.advertise", format!("at most {MAX_ADDRS} addresses")));
    }
    let advertise = d
        .advertise
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let name = format!("discovery.advertise[{i}]");
            let parsed: crate::transport::Addr =
                a.parse().map_err(|e: crate::transport::AddrError| field(name.clone(), e.to_string()))?;
            if parsed.socket().ip().is_unspecified() || parsed.to_string().len() > MAX_ADDR_LEN {
                return Err(field(name, "an address others can dial (not 0.0.0.0)"));
            }
            Ok(parsed)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if d.guards.len() > skyroute_proto::dht::record::MAX_GUARDS {
        return Err(field("discovery.guards", format!("at most {} guards", skyroute_proto::dht::record::MAX_GUARDS)));
    }
    if !d.guards.is_empty() && !d.advertise.is_empty() {
        return Err(field("discovery.advertise", "a guarded node advertises no address (guards hide it)"));
    }
    let guards = d
        .guards
        .iter()
        .enumerate()
        .map(|(i, g)| key(format!("discovery.guards[{i}]"), g))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(crate::driver::DhtOptions { services: d.services.clone(), advertise, guards }))
}

/// A configuration error, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    /// The file could not be read.
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    #[error("{0}")]
    /// Not valid TOML (the parser's message, with the line).
    Syntax(String),
    #[error("{field}: {message}")]
    /// A field with a wrong value.
    Field {
        /// The field (`section.name`).
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// Parses every entry of the list `name`; an error names the entry (`name[i]`).
fn each<T, E: std::fmt::Display>(
    name: &str,
    list: &[String],
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Vec<T>, ConfigError> {
    list.iter().enumerate().map(|(i, v)| parse(v).map_err(|e| field(format!("{name}[{i}]"), e.to_string()))).collect()
}

fn field(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Field { field: field.into(), message: message.into() }
}

impl Default for Config {
    fn default() -> Self {
        // The same defaults as an empty file.
        Config::parse("").unwrap_or_else(|_| Config {
            udp: Bind::Default,
            tcp: Bind::Default,
            quic: Bind::Default,
            peers: Vec::new(),
            topology: Vec::new(),
            node: real_node_config(),
            session: SessionConfig::default(),
            log: None,
            gateway: None,
            discovery: false,
            dht: None,
            escrow: None,
            interfaces: crate::transport::iface::Policy::Auto,
        })
    }
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::parse(&text)
    }

    /// Validates a configuration from its TOML text (an empty text gives the defaults).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: Raw =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.message().to_string() + &span(text, e.span())))?;
        let (udp, tcp, quic) = (
            bind("listen.udp", &raw.listen.udp)?,
            bind("listen.tcp", &raw.listen.tcp)?,
            bind("listen.quic", &raw.listen.quic)?,
        );
        if [udp, tcp, quic].iter().all(|b| *b == Bind::Off) {
            return Err(field("listen", "every transport is off"));
        }
        let peers = raw
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let key = key(format!("peers[{i}].key"), &p.key)?;
                let addr = p.addr.parse::<Addr>().map_err(|e| field(format!("peers[{i}].addr"), e.to_string()))?;
                Ok(Peer { key, addr })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let topology = raw
            .topology
            .iter()
            .enumerate()
            .map(|(i, e)| Ok((key(format!("topology[{i}].a"), &e.a)?, key(format!("topology[{i}].b"), &e.b)?)))
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let mut session = SessionConfig::default();
        if let Some(v) = raw.session.routes {
            if !(1..=8).contains(&v) {
                return Err(field("session.routes", "must be between 1 and 8"));
            }
            session.routes = v;
        }
        if let Some(v) = raw.session.bulk_on_metered {
            session.bulk_on_metered = v;
        }
        let interfaces = match &raw.listen.interfaces {
            None => crate::transport::iface::Policy::Auto,
            Some(names) if names.is_empty() => crate::transport::iface::Policy::Off,
            Some(names) => {
                for (i, n) in names.iter().enumerate() {
                    check_ifname(n).map_err(|e| field(format!("listen.interfaces[{i}]"), e.to_string()))?;
                }
                crate::transport::iface::Policy::Named(names.clone())
            }
        };
        if let Some(v) = raw.session.realtime_copies {
            if !(1..=8).contains(&v) {
                return Err(field("session.realtime_copies", "must be between 1 and 8"));
            }
            session.realtime_copies = v;
        }
        if let Some(l) = &raw.log.level {
            if l.parse::<tracing_subscriber::filter::Targets>().is_err() {
                return Err(field("log.level", format!("not a log filter: {l:?}")));
            }
        }
        let mut node = real_node_config();
        let g = &mut node.guard;
        let bounded = |name: &str, v: u32, max: u32| {
            if (1..=max).contains(&v) {
                Ok(v)
            } else {
                Err(field(format!("guard.{name}"), format!("must be between 1 and {max}")))
            }
        };
        if let Some(v) = raw.guard.load_threshold {
            // 0 asks every init for a cookie.
            if v > 1_000_000 {
                return Err(field("guard.load_threshold", "must be at most 1000000"));
            }
            g.load_threshold = v;
        }
        if let Some(v) = raw.guard.handshakes_per_host_s {
            g.per_host_rate = bounded("handshakes_per_host_s", v, 100_000)?;
            g.per_host_burst = g.per_host_burst.min(v).max(1);
        }
        if let Some(v) = raw.guard.cookies_per_host_s {
            g.cookies_per_host = bounded("cookies_per_host_s", v, 1_000_000)?;
        }
        if let Some(v) = raw.guard.handshakes_per_s {
            g.max_per_s = bounded("handshakes_per_s", v, 1_000_000)?;
        }
        if let Some(v) = raw.guard.max_half_open {
            if !(1..=1 << 20).contains(&v) {
                return Err(field("guard.max_half_open", "must be between 1 and 1048576"));
            }
            g.max_half_open = v;
        }
        if let Some(v) = raw.guard.route_setups_per_s {
            node.route.setup_rate = bounded("route_setups_per_s", v, 1_000_000)?;
            node.route.setup_burst = v;
        }
        let f = &mut node.forward;
        if let Some(v) = raw.forward.max_in_flight {
            if !(16..=65_536).contains(&v) {
                return Err(field("forward.max_in_flight", "must be between 16 and 65536"));
            }
            f.max_in_flight = v;
        }
        if let Some(v) = raw.forward.congestion_window {
            f.congestion_window = v;
        }
        if let Some(v) = raw.forward.route_buffer_bytes {
            if !(64 * 1024..=1 << 30).contains(&v) {
                return Err(field("forward.route_buffer_bytes", "must be between 65536 and 1073741824"));
            }
            f.route_buffer_bytes = v;
        }
        if let Some(v) = raw.forward.realtime_buffer_bytes {
            if !(64 * 1024..=1 << 30).contains(&v) {
                return Err(field("forward.realtime_buffer_bytes", "must be between 65536 and 1073741824"));
            }
            f.realtime_buffer_bytes = v;
        }
        if let Some(v) = raw.forward.memory_budget_bytes {
            if v < 2 * (f.route_buffer_bytes + f.realtime_buffer_bytes) {
                return Err(field("forward.memory_budget_bytes", "must hold at least one route (both directions)"));
            }
            f.memory_budget_bytes = v;
        }
        if let Some(v) = raw.link.keepalive_s {
            if v > 3600 {
                return Err(field("link.keepalive_s", "at most 3600 (0 turns keepalives off)"));
            }
            node.link.keepalive = (v > 0).then(|| std::time::Duration::from_secs(v));
        }
        if let Some(v) = raw.link.key_max_age_s {
            if !(10..=86_400).contains(&v) {
                return Err(field("link.key_max_age_s", "must be between 10 and 86400"));
            }
            node.link.key_max_age = std::time::Duration::from_secs(v);
        }
        let escrow = accounting(&raw.accounting, &mut node.route.accounting)?;
        let gateway = raw.gateway.as_ref().map(gateway).transpose()?;
        Ok(Config {
            udp,
            tcp,
            quic,
            peers,
            topology,
            node,
            session,
            log: raw.log.level,
            gateway,
            discovery: raw.discovery.announce,
            dht: dht_options(&raw.discovery)?,
            escrow,
            interfaces,
        })
    }
}

/// " (line L)" for a byte span in `text`.
fn span(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.map(|s| format!(" (line {})", text[..s.start.min(text.len())].lines().count().max(1))).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let e = |t: &str| Config::parse(t).unwrap_err().to_string();
        assert!(e("[listen]\nudp = \"nope\"").starts_with("listen.udp:"));
        assert!(e("[listen]\nudp = \"off\"\ntcp = \"off\"\nquic = \"off\"").starts_with("listen:"));
        assert!(e("[session]\nroutes = 0").starts_with("session.routes:"));
        assert!(e("[log]\nlevel = \"=[\"").starts_with("log.level:"));
        assert!(e("[[topology]]\na = \"x\"\nb = \"y\"").starts_with("topology[0].a:"));
        assert!(e("[[peers]]\nkey = \"00\"\naddr = \"127.0.0.1:1\"").starts_with("peers[0].key:"));
        let k = skyroute_proto::SecretKey::generate(&mut rand_core::OsRng).public_key().to_string();
        let bad_addr = format!("[[peers]]\nkey = \"{k}\"\naddr = \"x\"");
        assert!(e(&bad_addr).starts_with("peers[0].addr:") || e(&bad_addr).starts_with("peers[0].key:"));
        assert!(e("[forward]\nroute_buffer_bytes = 5").starts_with("forward.route_buffer_bytes:"));
        assert!(e("[link]\nkeepalive_s = 99999").starts_with("link.keepalive_s:"));
        assert!(e("[link]\nkey_max_age_s = 1").starts_with("link.key_max_age_s:"));
        assert!(e("[link]\nkeepalive = 5").contains("keepalive"));
        let quiet = Config::parse("").unwrap();
        assert_eq!(quiet.node.link.keepalive, None, "keepalives off by default (a phone's radio)");
        let nat = Config::parse("[link]\nkeepalive_s = 25\nkey_max_age_s = 180").unwrap();
        assert_eq!(nat.node.link.keepalive, Some(std::time::Duration::from_secs(25)));
        assert_eq!(nat.node.link.key_max_age, std::time::Duration::from_secs(180));
        use crate::transport::iface::Policy;
        assert_eq!(quiet.interfaces, Policy::Auto, "every default-route interface, when two or more");
        assert_eq!(Config::parse("[listen]\ninterfaces = []").unwrap().interfaces, Policy::Off);
        let two = Config::parse("[listen]\ninterfaces = [\"wlan0\", \"wwan0\"]").unwrap();
        assert_eq!(two.interfaces, Policy::Named(vec!["wlan0".into(), "wwan0".into()]));
        assert!(e("[listen]\ninterfaces = [\"a/b\"]").starts_with("listen.interfaces[0]:"));
        assert!(quiet.session.bulk_on_metered);
        assert!(!Config::parse("[session]\nbulk_on_metered = false").unwrap().session.bulk_on_metered);
        assert!(e("colour = 3").contains("colour"), "unknown fields are named: {}", e("colour = 3"));
        assert!(e("listen = ").contains("line 1"));
        let ok = Config::parse(&format!(
            "[listen]\nudp = \"127.0.0.1:0\"\nquic = \"off\"\n[[peers]]\nkey = \"{k}\"\naddr = \"tcp://127.0.0.1:9\"\n[forward]\nroute_buffer_bytes = 131072"
        ))
        .unwrap();
        assert_eq!(ok.node.forward.route_buffer_bytes, 131072);
        assert!(!ok.node.forward.congestion_window, "off unless asked for");
        assert!(Config::parse("[forward]\ncongestion_window = true").unwrap().node.forward.congestion_window);
        let g = Config::parse(
            "[guard]\nload_threshold = 0\nhandshakes_per_s = 100\nmax_half_open = 16\nroute_setups_per_s = 40",
        )
        .unwrap()
        .node;
        assert_eq!((g.guard.load_threshold, g.guard.max_per_s, g.guard.max_half_open), (0, 100, 16));
        assert_eq!((g.route.setup_rate, g.route.setup_burst), (40, 40));
        assert!(e("[guard]\nhandshakes_per_s = 0").starts_with("guard.handshakes_per_s:"));
        assert!(e("[guard]\ncookies = 3").contains("unknown field"), "{}", e("[guard]\ncookies = 3"));
        assert!(e("[forward]\ncongestion_window = 3").contains("line 2"), "{}", e("[forward]\ncongestion_window = 3"));
        assert_eq!((ok.udp, ok.tcp, ok.quic), (Bind::At("127.0.0.1:0".parse().unwrap()), Bind::Default, Bind::Off));
        assert_eq!(ok.peers[0].addr, Addr::Tcp("127.0.0.1:9".parse().unwrap()));
    }

    #[test]
    fn gateway_section() {
        use skyroute_proto::vpn::Access;
        let e = |t: &str| Config::parse(t).unwrap_err().to_string();
        assert!(e("[gateway]").starts_with("gateway.allow:"), "no silent open gateway: {}", e("[gateway]"));
        assert!(e("[gateway]\nallow = [\"zz\"]").starts_with("gateway.allow[0]:"));
        let k = skyroute_proto::SecretKey::generate(&mut rand_core::OsRng).public_key();
        assert!(e(&format!("[gateway]\nopen = true\nallow = [\"{k}\"]")).starts_with("gateway.open:"));
        assert!(e("[gateway]\nopen = true\npool = \"10.77.0.0/31\"").starts_with("gateway.pool:"));
        assert!(e("[gateway]\nopen = true\npool = \"10.77.0/16\"").starts_with("gateway.pool:"));
        assert!(e("[gateway]\nopen = true\nmtu = 100").starts_with("gateway.mtu:"));
        assert!(e("[gateway]\nopen = true\ntun = \"a/b\"").starts_with("gateway.tun:"));
        assert!(e("[gateway]\nopen = true\nuplink = \"much-too-long-name\"").starts_with("gateway.uplink:"));
        assert!(e("[gateway]\nopen = true\nblocked = [\"1.2.3.4/40\"]").starts_with("gateway.blocked[0]:"));
        assert!(e("[gateway]\nopen = true\nrate_limit = 0").starts_with("gateway.rate_limit:"));
        let open = Config::parse("[gateway]\nopen = true").unwrap().gateway.unwrap();
        assert_eq!(open.service.access, Access::Open);
        assert_eq!((open.service.pool.to_string().as_str(), open.service.prefix_len), ("10.77.0.0", 16));
        assert_eq!((open.tun.as_str(), open.nat, open.uplink), ("skygw0", true, None));
        let g = Config::parse(&format!(
            "[gateway]\nallow = [\"{k}\"]\npool = \"10.9.8.7/24\"\nuplink = \"up0\"\nrate_limit = 1000\nblocked = [\"192.168.0.0/16\"]"
        ))
        .unwrap()
        .gateway
        .unwrap();
        assert_eq!(g.service.access, Access::Keys([k].into()));
        assert_eq!(g.service.pool.to_string(), "10.9.8.0", "the pool is its network address");
        assert_eq!((g.service.rate_limit, g.uplink.as_deref()), (Some(1000), Some("up0")));
        assert_eq!(g.service.blocked, vec![("192.168.0.0".parse().unwrap(), 16)]);
        // IPv6: a ULA /64 from the key by default, stable; off; or a prefix of one's own.
        assert_eq!(g.pool6, Pool6::Auto);
        let auto = g.service_for(&k).pool6.unwrap();
        assert_eq!((auto.0.octets()[0], auto.1), (0xfd, 64));
        assert_eq!(g.service_for(&k).pool6, Some(auto), "the same pool every start");
        let other = skyroute_proto::SecretKey::generate(&mut rand_core::OsRng).public_key();
        assert_ne!(g.service_for(&other).pool6, Some(auto), "another gateway, another pool");
        let off = Config::parse("[gateway]\nopen = true\npool6 = \"off\"").unwrap().gateway.unwrap();
        assert_eq!(off.service_for(&k).pool6, None);
        let own =
            Config::parse("[gateway]\nopen = true\npool6 = \"fd12:3456:789a:1::5/64\"\nblocked6 = [\"2001:db8::/32\"]")
                .unwrap()
                .gateway
                .unwrap();
        assert_eq!(own.service_for(&k).pool6, Some(("fd12:3456:789a:1::".parse().unwrap(), 64)));
        assert_eq!(own.service.blocked6, vec![("2001:db8::".parse().unwrap(), 32)]);
        assert!(e("[gateway]\nopen = true\npool6 = \"fd00::/16\"").starts_with("gateway.pool6:"));
        assert!(e("[gateway]\nopen = true\npool6 = \"10.0.0.0/8\"").starts_with("gateway.pool6:"));
        assert!(e("[gateway]\nopen = true\nblocked6 = [\"fd00::/200\"]").starts_with("gateway.blocked6[0]:"));
        // DNS: public resolvers by default, the configured ones, or none.
        assert_eq!(open.service.dns.len(), 2);
        let dns = Config::parse("[gateway]\nopen = true\ndns = [\"10.0.0.53\"]").unwrap().gateway.unwrap();
        assert_eq!(dns.service.dns, vec!["10.0.0.53".parse::<std::net::IpAddr>().unwrap()]);
        let none = Config::parse("[gateway]\nopen = true\ndns = []").unwrap().gateway.unwrap();
        assert!(none.service.dns.is_empty());
        assert!(e("[gateway]\nopen = true\ndns = [\"resolver\"]").starts_with("gateway.dns[0]:"));
        assert!(Config::parse("").unwrap().gateway.is_none());
        assert!(Config::parse("[discovery]\nannounce = true").unwrap().discovery);
        assert!(!Config::parse("").unwrap().discovery, "off by default");
        assert!(e("[discovery]\nflood = 1").contains("flood"));
        let d =
            Config::parse("[discovery]\ndht = true\nservices = [\"chain-x\"]\nadvertise = [\"udp://192.0.2.1:7070\"]")
                .unwrap()
                .dht
                .unwrap();
        assert_eq!(
            (d.services, d.advertise[0].to_string()),
            (vec!["chain-x".to_string()], "udp://192.0.2.1:7070".into())
        );
        assert!(Config::parse("").unwrap().dht.is_none(), "off by default");
        assert!(e("[discovery]\nservices = [\"x\"]").starts_with("discovery.dht:"));
        assert!(e("[accounting]\npolicy = \"maybe\"").starts_with("accounting.policy:"));
        assert!(e("[accounting]\naccount = \"ab\"").starts_with("accounting.escrow:"));
        assert!(e("[accounting]\nescrow = \"127.0.0.1:7480\"").starts_with("accounting.account:"));
        assert!(e("[accounting]\nescrow = \"127.0.0.1:7480\"\naccount = \"xyz\"").starts_with("accounting.account:"));
        assert!(e("[accounting]\ninterval_ms = 5").starts_with("accounting.interval_ms:"));
        let ok = Config::parse(
            "[accounting]\nprice_per_mib = 300\npay = false\npolicy = \"drop\"\nescrow = \"127.0.0.1:7480\"\naccount = \"ab12\"",
        )
        .unwrap();
        assert_eq!(ok.node.route.accounting.price_per_mib, 300);
        assert_eq!(ok.node.route.accounting.max_price_per_mib, None);
        assert_eq!(ok.escrow.unwrap().account, "ab12");
        assert!(e("[discovery]\ndht = true\nadvertise = [\"0.0.0.0:1\"]").starts_with("discovery.advertise[0]:"));
        assert!(e("[discovery]\ndht = true\nadvertise = [\"nope\"]").starts_with("discovery.advertise[0]:"));
        assert!(e("[discovery]\ndht = true\nservices = [\"\"]").starts_with("discovery.services[0]:"));
        assert!(e("[discovery]\ndht = true\nguards = [\"zz\"]").starts_with("discovery.guards[0]:"));
    }
}
