//! The uniffi API (Kotlin, Swift): `Node`, `Tunnel`, `PacketQueue`, the listener and socket
//! protector the platform implements, typed errors. Synchronous calls (the platform's VPN
//! service runs them on its own threads); no call panics across the boundary.

use std::sync::Arc;
use std::time::Duration;

use crate::core::{guard, NodeCore, NodeEvent, Queue, Result, SkyrouteError, TunnelCore};
use crate::logging;

/// What the platform hears from a node: events, and log lines (info and above).
#[uniffi::export(with_foreign)]
pub trait NodeListener: Send + Sync {
    fn on_event(&self, event: NodeEvent);
    fn on_log(&self, level: LogLevel, message: String);
}

/// The platform's hand on the node's sockets (Android).
#[uniffi::export(with_foreign)]
pub trait SocketProtector: Send + Sync {
    /// `VpnService.protect(fd)`: called with every socket the node opens, so its own traffic
    /// stays outside the VPN. Return false if it could not be protected.
    fn protect(&self, fd: i32) -> bool;
    /// Binds socket `fd` to the network whose handle is `network` (as given in
    /// [`NetworkInfo::id`]): Android's `Network.bindSocket`. Called once per network for the
    /// socket the node sends over it; return false if it could not be bound.
    fn bind_to_network(&self, fd: i32, network: u64) -> bool;
}

/// What kind of network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum NetworkKind {
    Wifi,
    Cellular,
    Ethernet,
    Other,
}

/// One network the platform offers (Android: a `Network` from `ConnectivityManager`; iOS:
/// an interface of the `NWPath`).
#[derive(Debug, Clone, uniffi::Record)]
pub struct NetworkInfo {
    /// Stable while the network exists: `Network.getNetworkHandle()` on Android, the
    /// interface index on iOS.
    pub id: u64,
    /// Interface name (`wlan0`, `rmnet0`, `en0`, `pdp_ip0`).
    pub name: String,
    pub kind: NetworkKind,
    /// Costs per byte: with `[session] bulk_on_metered = false` bulk stays off it while
    /// another network works.
    pub metered: bool,
    pub up: bool,
    /// OS interface index (iOS binds with `IP_BOUND_IF` to it); 0 if unknown.
    pub index: u32,
}

impl From<NetworkInfo> for skyroute::transport::iface::Network {
    fn from(n: NetworkInfo) -> Self {
        use skyroute::transport::iface::NetKind;
        skyroute::transport::iface::Network {
            id: n.id,
            name: n.name,
            kind: match n.kind {
                NetworkKind::Wifi => NetKind::Wifi,
                NetworkKind::Cellular => NetKind::Cellular,
                NetworkKind::Ethernet => NetKind::Ethernet,
                NetworkKind::Other => NetKind::Other,
            },
            metered: n.metered,
            up: n.up,
            index: n.index,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// How packets are framed on a platform's tunnel fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum TunFraming {
    /// One IP packet per read/write (Android's VpnService, Linux TUN).
    Plain,
    /// A 4-byte address family first (Apple's utun).
    AfHeader,
}

impl From<TunFraming> for skyroute::tun::Framing {
    fn from(f: TunFraming) -> Self {
        match f {
            TunFraming::Plain => skyroute::tun::Framing::Plain,
            TunFraming::AfHeader => skyroute::tun::Framing::AfHeader,
        }
    }
}

/// A snapshot of the node.
#[derive(Debug, Clone, uniffi::Record)]
pub struct NodeStatus {
    pub public_key: String,
    pub links_up: u32,
    pub sessions: u32,
    /// Everything, as `skyroute status --json` prints it.
    pub json: String,
}

/// The tunnel's counters.
#[derive(Debug, Clone, uniffi::Record)]
pub struct TunnelStats {
    pub packets_out: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub dropped: u64,
    pub reconnects: u64,
}

#[derive(uniffi::Object)]
pub struct Node {
    core: Arc<NodeCore>,
    log_sink: Option<u64>,
    /// This node set the process's socket hook (cleared when it goes).
    protects: bool,
}

#[uniffi::export]
impl Node {
    /// Starts a node: `config` is the TOML of `skyroute node` (may be empty), `data_dir`
    /// holds the identity (created on first start). `protector` (Android) sees every socket
    /// before use.
    #[uniffi::constructor]
    pub fn start(
        config: String,
        data_dir: String,
        listener: Option<Arc<dyn NodeListener>>,
        protector: Option<Arc<dyn SocketProtector>>,
    ) -> Result<Arc<Node>> {
        guard(|| {
            let protects = protector.is_some();
            if let Some(p) = protector {
                let b = p.clone();
                skyroute::transport::set_socket_hook(Some(Arc::new(move |fd| p.protect(fd))));
                skyroute::transport::iface::set_bind_hook(Some(Arc::new(move |fd, net| b.bind_to_network(fd, net.id))));
            }
            let log_sink = listener.clone().map(logging::register);
            let events = listener.map(|l| Arc::new(move |e| l.on_event(e)) as crate::core::EventSink);
            match NodeCore::start(&config, &data_dir, events) {
                Ok(core) => Ok(Arc::new(Node { core, log_sink, protects })),
                Err(e) => {
                    if let Some(id) = log_sink {
                        logging::unregister(id);
                    }
                    if protects {
                        skyroute::transport::set_socket_hook(None);
                        skyroute::transport::iface::set_bind_hook(None);
                    }
                    Err(e)
                }
            }
        })
    }

    pub fn public_key(&self) -> String {
        self.core.public_key()
    }

    /// The node's address (hash of its key).
    pub fn address(&self) -> String {
        self.core.address()
    }

    /// Where it listens (`udp://...`, `tcp://...`, `quic://...`).
    pub fn listen_addresses(&self) -> Vec<String> {
        self.core.listen()
    }

    pub fn status(&self) -> Result<NodeStatus> {
        guard(|| {
            let s = self.core.status()?;
            Ok(NodeStatus {
                public_key: s.public_key.clone(),
                links_up: s.links.iter().filter(|l| l.state == "up").count() as u32,
                sessions: s.sessions.len() as u32,
                json: serde_json::to_string(&s).map_err(|e| SkyrouteError::Internal { reason: e.to_string() })?,
            })
        })
    }

    /// Dials a neighbour: its key (hex) and address (`udp://`, `tcp://`, `quic://` or a bare
    /// `IP:PORT` for UDP).
    pub fn connect(&self, key: String, addr: String) -> Result<()> {
        guard(|| self.core.connect(&key, &addr))
    }

    /// Tells route finding that nodes `a` and `b` are linked (until discovery lands).
    pub fn add_topology(&self, a: String, b: String) -> Result<()> {
        guard(|| self.core.add_topology(&a, &b))
    }

    /// The OS reports its networks (call at start and on every change: Android's
    /// `NetworkCallback`, iOS's `NWPathMonitor`): each up network gets a socket bound to it
    /// (through [`SocketProtector::bind_to_network`] on Android, `IP_BOUND_IF` on iOS) and the
    /// neighbours are dialled over each, so WiFi and cellular carry routes at once; a network
    /// gone or down takes its links down at once. Every link and path is probed.
    pub fn network_changed(&self, networks: Vec<NetworkInfo>) -> Result<()> {
        guard(|| self.core.set_networks(networks.into_iter().map(Into::into).collect()))
    }

    /// Starts the VPN tunnel to `gateway` (its key, or an address the node knows), with
    /// packets through the tunnel's calls (iOS's packet flow, firmware). `routes`: disjoint
    /// routes, 0 for the configured number.
    pub fn start_tunnel(&self, gateway: String, routes: u32) -> Result<Arc<Tunnel>> {
        guard(|| Ok(Arc::new(Tunnel { core: self.core.start_tunnel(&gateway, routes)? })))
    }

    /// Starts the VPN tunnel on the platform's tunnel `fd` (Android: `ParcelFileDescriptor.detachFd()`;
    /// the node owns and closes it).
    pub fn start_tunnel_fd(&self, gateway: String, routes: u32, fd: i32, framing: TunFraming) -> Result<Arc<Tunnel>> {
        guard(|| Ok(Arc::new(Tunnel { core: self.core.start_tunnel_fd(&gateway, routes, fd, framing.into())? })))
    }

    /// A gateway node's uplink (its `[gateway]` section configured): what clients send out
    /// comes out of it, what goes in reaches them. For platforms that own the uplink.
    pub fn gateway_uplink(&self) -> Result<Arc<PacketQueue>> {
        guard(|| Ok(Arc::new(PacketQueue { node: self.core.clone(), queue: self.core.gateway_uplink()? })))
    }

    /// Stops the node; later calls get `Stopped`.
    pub fn stop(&self) -> Result<()> {
        guard(|| self.core.stop())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(id) = self.log_sink {
            logging::unregister(id);
        }
        if self.protects {
            skyroute::transport::set_socket_hook(None);
            skyroute::transport::iface::set_bind_hook(None);
        }
    }
}

#[derive(uniffi::Object)]
pub struct Tunnel {
    core: Arc<TunnelCore>,
}

fn timeout(ms: u32) -> Duration {
    Duration::from_millis(ms.min(600_000) as u64)
}

#[uniffi::export]
impl Tunnel {
    /// The address the gateway assigned.
    pub fn address(&self) -> String {
        self.core.assignment().address.to_string()
    }

    pub fn prefix_len(&self) -> u8 {
        self.core.assignment().prefix_len
    }

    /// The gateway's address inside the tunnel (a DNS server or route target).
    pub fn gateway_address(&self) -> String {
        self.core.assignment().gateway.to_string()
    }

    /// The MTU to give the platform's tunnel interface (with IPv6, at least 1280).
    pub fn mtu(&self) -> u16 {
        self.core.mtu()
    }

    /// The IPv6 address the gateway assigned; null when the gateway carries no IPv6 (route
    /// `::/0` into the tunnel anyway, with a local address such as `fdff::1/128`: the node
    /// answers that IPv6 with "no route" at once, so nothing leaks and applications fall
    /// back to IPv4).
    pub fn address6(&self) -> Option<String> {
        self.core.assignment().v6.map(|v| v.address.to_string())
    }

    /// The IPv6 prefix length (0 without IPv6).
    pub fn prefix6_len(&self) -> u8 {
        self.core.assignment().v6.map_or(0, |v| v.prefix_len)
    }

    /// The DNS servers the gateway offers (reached through the tunnel): give them to the
    /// platform (`VpnService.Builder.addDnsServer`, `NEDNSSettings`); empty: none offered.
    pub fn dns_servers(&self) -> Vec<String> {
        self.core.assignment().dns.iter().map(|d| d.to_string()).collect()
    }

    /// The gateway's IPv6 address inside the tunnel; null without IPv6.
    pub fn gateway_address6(&self) -> Option<String> {
        self.core.assignment().v6.map(|v| v.gateway.to_string())
    }

    /// Sends one IP packet (IPv4 or IPv6) read from the platform's tunnel.
    pub fn send_packet(&self, packet: Vec<u8>) -> Result<()> {
        guard(|| self.core.send(&packet))
    }

    /// The next packet for the platform's tunnel, waiting up to `timeout_ms`; null if none.
    pub fn recv_packet(&self, timeout_ms: u32) -> Result<Option<Vec<u8>>> {
        guard(|| self.core.recv(timeout(timeout_ms)))
    }

    /// Moves the tunnel onto the platform's tunnel fd (Android: build the VpnService
    /// interface with `address()`, `prefix_len()` and `mtu()`, then hand over
    /// `ParcelFileDescriptor.detachFd()`); packet calls end. The node closes the fd.
    pub fn attach_fd(&self, fd: i32, framing: TunFraming) -> Result<()> {
        guard(|| self.core.attach_fd(fd, framing.into()))
    }

    pub fn stats(&self) -> Result<TunnelStats> {
        guard(|| {
            let t = self.core.stats()?;
            Ok(TunnelStats {
                packets_out: t.packets_out,
                packets_in: t.packets_in,
                bytes_out: t.bytes_out,
                bytes_in: t.bytes_in,
                dropped: t.dropped,
                reconnects: t.reconnects,
            })
        })
    }

    /// Ends the tunnel; later calls get `Stopped`.
    pub fn stop(&self) -> Result<()> {
        guard(|| self.core.stop())
    }
}

/// Packets through blocking calls (a gateway's uplink).
#[derive(uniffi::Object)]
pub struct PacketQueue {
    node: Arc<NodeCore>,
    queue: Queue,
}

#[uniffi::export]
impl PacketQueue {
    pub fn send_packet(&self, packet: Vec<u8>) -> Result<()> {
        guard(|| self.queue.send(&packet))
    }

    pub fn recv_packet(&self, timeout_ms: u32) -> Result<Option<Vec<u8>>> {
        guard(|| self.queue.recv(self.node.runtime(), timeout(timeout_ms)))
    }
}

/// The library's version.
#[uniffi::export]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// Checks a configuration without starting anything: `None` if good, else the error (naming
/// the field).
#[uniffi::export]
pub fn check_config(config: String) -> Option<String> {
    skyroute::config::Config::parse(&config).err().map(|e| e.to_string())
}
