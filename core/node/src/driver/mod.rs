//! The tokio driver around the sans-IO core, as thin as quinn's around quinn-proto: it owns
//! the sockets (UDP, TCP, QUIC) and the timer, feeds packets and `now` into the [`Node`] and
//! its [`Sessions`], writes their packets out, and runs the channel services on the sessions.
//! No protocol logic lives here.
//!
//! [`RunningNode::spawn`] starts one in a task; [`NodeHandle`] is the typed API the control
//! socket, the CLI and in-process users (the demo, tests) share.

mod run;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use skyroute_proto::{Class, Event, NodeConfig, PublicKey, RouteError, RouteId, SecretKey, SessionConfig};
use tokio::sync::{mpsc, oneshot};

use crate::control::{PingReport, ServiceMessage, Status, TransferReport};
use crate::service::transfer::{Received, Source};
use crate::transport::iface::Policy;
use crate::transport::Addr;

/// How to run a node.
#[derive(Clone)]
pub struct Options {
    /// The node's identity.
    pub identity: SecretKey,
    /// Link, route and store-and-forward settings.
    pub node: NodeConfig,
    /// Session settings.
    pub session: SessionConfig,
    /// Listen addresses; `None` leaves a transport off (UDP is needed for `udp://` peers).
    pub udp: Option<SocketAddr>,
    /// TCP listen address; None: no TCP listener.
    pub tcp: Option<SocketAddr>,
    /// QUIC listen address; None: no QUIC endpoint.
    pub quic: Option<SocketAddr>,
    /// Where received files go (`received/`); without one they are only hashed.
    pub data_dir: Option<PathBuf>,
    /// Known links between other nodes (until discovery): route finding uses them.
    pub topology: Vec<(PublicKey, PublicKey)>,
    /// Serve as an IPv4 gateway: packets clients may send out come out of
    /// [`RunningNode::uplink`], and packets for clients go in there.
    pub gateway: Option<skyroute_proto::vpn::GatewayConfig>,
    /// Announce our links to neighbours and learn the graph from theirs (off by default).
    pub discovery: bool,
    /// Join the DHT: publish our record and answer and run lookups (off by default).
    pub dht: Option<DhtOptions>,
    /// Settle payments at an escrow: authorise our routes' payer keys, cash our receipts.
    pub escrow: Option<EscrowOptions>,
    /// Which local networks get sockets of their own (UDP, QUIC, TCP), neighbours being
    /// dialled over each (off: unbound sockets, the OS routes).
    pub interfaces: crate::transport::iface::Policy,
}

/// Where and as whom a node settles payments (`skyroute escrow`).
#[derive(Debug, Clone)]
pub struct EscrowOptions {
    /// The escrow's address.
    pub addr: SocketAddr,
    /// Our account: credited with what our relay routes earned, debited for our routes.
    pub account: String,
    /// Its secret: needed to authorise our routes' payer keys (a source); a relay that only
    /// earns leaves it out.
    pub secret: Option<String>,
}

/// What a node publishes in the DHT.
#[derive(Debug, Clone, Default)]
pub struct DhtOptions {
    /// Services the node offers (names; the DHT keys them by hash).
    pub services: Vec<String>,
    /// Addresses others dial us at; empty: the listen addresses (those on a specified IP).
    pub advertise: Vec<Addr>,
    /// Our guards: sources reach us only through them, and our record carries no address.
    pub guards: Vec<PublicKey>,
}

/// What to look up in the DHT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupTarget {
    /// A node, by key.
    Node(PublicKey),
    /// A node, by address.
    Address(skyroute_proto::Address),
    /// The nodes offering a service, by name.
    Service(String),
}

impl std::str::FromStr for LookupTarget {
    type Err = NodeError;
    /// A public key (66 hex digits), an address (40 hex digits) or `service:NAME`.
    fn from_str(s: &str) -> Result<LookupTarget, NodeError> {
        if let Some(name) = s.strip_prefix("service:") {
            if name.is_empty() {
                return Err(NodeError::BadTarget("service: needs a name".into()));
            }
            return Ok(LookupTarget::Service(name.to_string()));
        }
        if let Ok(k) = PublicKey::from_hex(s) {
            return Ok(LookupTarget::Node(k));
        }
        skyroute_proto::Address::from_hex(s).map(LookupTarget::Address).map_err(|_| {
            NodeError::BadTarget(format!(
                "{s:?} is not a public key (66 hex digits), an address (40 hex digits) or service:NAME"
            ))
        })
    }
}

/// Packets to and from a tunnel: `tx` sends packets out of the node's side, `rx` takes them
/// in. For a gateway, the uplink (the internet side); for a client, the platform's tunnel (a
/// TUN device, an Android VpnService fd, iOS's packet flow, or the caller's own code).
pub struct PacketPort {
    /// Packets out of this side.
    pub tx: mpsc::Sender<Vec<u8>>,
    /// Packets into this side.
    pub rx: mpsc::Receiver<Vec<u8>>,
}

impl PacketPort {
    /// Two connected ends: what one sends, the other receives.
    pub fn pair(capacity: usize) -> (PacketPort, PacketPort) {
        let (a_tx, b_rx) = mpsc::channel(capacity);
        let (b_tx, a_rx) = mpsc::channel(capacity);
        (PacketPort { tx: a_tx, rx: a_rx }, PacketPort { tx: b_tx, rx: b_rx })
    }
}

impl Options {
    /// UDP on an ephemeral loopback port, default settings.
    pub fn loopback(identity: SecretKey) -> Options {
        Options {
            identity,
            node: crate::config::real_node_config(),
            session: SessionConfig::default(),
            udp: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            tcp: None,
            quic: None,
            data_dir: None,
            topology: Vec::new(),
            gateway: None,
            discovery: false,
            dht: None,
            escrow: None,
            interfaces: crate::transport::iface::Policy::Off,
        }
    }

    /// All three transports on ephemeral loopback ports.
    pub fn loopback_all(identity: SecretKey) -> Options {
        let any = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        Options { tcp: any, quic: any, ..Options::loopback(identity) }
    }
}

/// Where a node listens.
#[derive(Debug, Clone, Copy, Default)]
pub struct Listening {
    /// The UDP socket's address.
    pub udp: Option<SocketAddr>,
    /// The TCP listener's address.
    pub tcp: Option<SocketAddr>,
    /// The QUIC endpoint's address.
    pub quic: Option<SocketAddr>,
}

impl Listening {
    /// The address of a transport, as peers dial it.
    pub fn addr(&self, kind: crate::transport::Kind) -> Option<Addr> {
        use crate::transport::Kind;
        let a = match kind {
            Kind::Udp => self.udp,
            Kind::Tcp => self.tcp,
            Kind::Quic => self.quic,
        }?;
        Some(kind.at(a))
    }

    /// The listen addresses as `kind://addr` strings.
    pub fn list(&self) -> Vec<String> {
        [self.udp.map(Addr::Udp), self.tcp.map(Addr::Tcp), self.quic.map(Addr::Quic)]
            .into_iter()
            .flatten()
            .map(|a| a.to_string())
            .collect()
    }
}

pub(crate) enum Command {
    Connect {
        peer: PublicKey,
        addr: Addr,
    },
    AddTopology {
        a: PublicKey,
        b: PublicKey,
    },
    OpenRoute {
        hops: Vec<PublicKey>,
        reply: oneshot::Sender<Result<RouteId, NodeError>>,
    },
    SendRoute {
        route: RouteId,
        class: Class,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Resolve {
        peer: String,
        reply: oneshot::Sender<Result<PublicKey, NodeError>>,
    },
    Ping {
        peer: PublicKey,
        count: u32,
        interval: Duration,
        reply: oneshot::Sender<Result<PingReport, NodeError>>,
    },
    Echo {
        peer: PublicKey,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NodeError>>,
    },
    Transfer {
        peer: PublicKey,
        source: Source,
        reply: oneshot::Sender<Result<TransferReport, NodeError>>,
    },
    Received {
        reply: oneshot::Sender<Vec<Received>>,
    },
    Message {
        peer: PublicKey,
        channel: u16,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    Register {
        channel: u16,
        to: mpsc::Sender<ServiceMessage>,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    WatchSessions {
        to: mpsc::Sender<()>,
    },
    TunnelUp {
        gateway: PublicKey,
        routes: Option<usize>,
        port: PacketPort,
        reply: oneshot::Sender<Result<skyroute_proto::vpn::Assignment, NodeError>>,
    },
    TunnelDown {
        reply: oneshot::Sender<bool>,
    },
    NetworkChanged,
    /// The OS reported an interface or address change: list the interfaces again.
    Rescan,
    /// The platform's networks now.
    Networks(Vec<crate::transport::iface::Network>),
    NearestGateway {
        reply: oneshot::Sender<Result<PublicKey, NodeError>>,
    },
    Lookup {
        target: LookupTarget,
        connect: bool,
        reply: oneshot::Sender<Result<crate::control::LookupReport, NodeError>>,
    },
    Stop,
}

/// Why a request to a running node failed: the error of every [`NodeHandle`] call (the
/// control socket sends its text, the bindings map it to their own error codes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The node's driver is not running (stopped, or its task ended).
    #[error("the node's driver is not running")]
    Stopped,
    /// A peer name that is neither a public key nor an address.
    #[error("{0:?} is neither a public key (66 hex digits) nor an address (40 hex digits)")]
    BadPeer(String),
    /// An address no known node has.
    #[error("no known node has address {0} (give its public key, or look it up: skyroute lookup)")]
    UnknownAddress(String),
    /// A lookup target that does not parse.
    #[error("lookup target: {0}")]
    BadTarget(String),
    /// No session could be opened or confirmed.
    #[error("no session to {peer}: {reason}")]
    NoSession {
        /// The peer.
        peer: String,
        /// Why (the session layer's error, or the setup timeout).
        reason: String,
    },
    /// The session a request rode on ended before the answer.
    #[error("{what}: session to {peer} ended: {why}")]
    SessionEnded {
        /// The request: "ping", "echo", "transfer".
        what: &'static str,
        /// The peer.
        peer: String,
        /// Why the session ended.
        why: String,
    },
    /// No answer within the request's time.
    #[error("no reply from {0}")]
    NoReply(String),
    /// A bare route could not be opened or used.
    #[error("route: {0}")]
    Route(#[from] RouteError),
    /// A transfer's source could not be read.
    #[error("reading the source {source_name}: {reason}")]
    Source {
        /// The source.
        source_name: String,
        /// The I/O error.
        reason: String,
    },
    /// Channels below [`crate::service::FIRST_FREE_CHANNEL`] belong to the node.
    #[error("channels below {} are the node's own", crate::service::FIRST_FREE_CHANNEL)]
    ReservedChannel(u16),
    /// Another service already serves the channel.
    #[error("channel {0} is taken")]
    ChannelTaken(u16),
    /// The request needs the DHT, which this node does not run.
    #[error("the DHT is off on this node ([discovery] dht = true)")]
    DhtOff,
    /// The DHT knows no gateway.
    #[error("no gateway found in the DHT")]
    NoGateway,
    /// Gateways are known, but route finding knows no way to any.
    #[error("gateways found, but no route to any is known")]
    NoRouteToGateway,
    /// A DHT lookup found nothing.
    #[error("lookup: {0}")]
    NotFound(String),
    /// The gateway refused the tunnel.
    #[error("the gateway refused: {0}")]
    GatewayRefused(String),
    /// A tunnel is up already (one at a time).
    #[error("a tunnel is already up (vpn down first)")]
    TunnelExists,
    /// The tunnel was taken down before the gateway answered.
    #[error("the tunnel was taken down")]
    TunnelDown,
    /// The session to the gateway ended before it answered.
    #[error("the session to the gateway ended")]
    GatewaySessionEnded,
}

/// A cloneable handle on a running node: the typed API behind the control socket.
#[derive(Clone)]
pub struct NodeHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl NodeHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(make(reply)).map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// [`NodeHandle::ask`] for commands whose answer may be an error.
    async fn try_ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, NodeError>>) -> Command,
    ) -> Result<T, NodeError> {
        self.ask(make).await?
    }

    fn tell(&self, c: Command) -> Result<(), NodeError> {
        self.commands.send(c).map_err(|_| NodeError::Stopped)
    }

    /// Dials a neighbour (its key and transport address).
    pub fn connect(&self, peer: PublicKey, addr: Addr) -> Result<(), NodeError> {
        self.tell(Command::Connect { peer, addr })
    }

    /// Tells route finding that `a` and `b` are linked.
    pub fn add_topology(&self, a: PublicKey, b: PublicKey) -> Result<(), NodeError> {
        self.tell(Command::AddTopology { a, b })
    }

    /// Starts building a bare route (no session); watch the events for `Ready` or `Failed`.
    pub async fn open_route(&self, hops: Vec<PublicKey>) -> Result<RouteId, NodeError> {
        self.try_ask(|reply| Command::OpenRoute { hops, reply }).await
    }

    /// Queues bytes on a bare route; `QueueFull` means wait for a `Writable` event.
    pub async fn send(&self, route: RouteId, class: Class, data: Vec<u8>) -> Result<(), NodeError> {
        self.try_ask(|reply| Command::SendRoute { route, class, data, reply }).await
    }

    /// The node's status (what `skyroute status --json` prints).
    pub async fn status(&self) -> Result<Status, NodeError> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// A peer named by its public key, or by an address (hash) the node knows the key of.
    pub async fn resolve(&self, peer: &str) -> Result<PublicKey, NodeError> {
        let peer = peer.to_string();
        self.try_ask(|reply| Command::Resolve { peer, reply }).await
    }

    /// `count` round trips over a session to `peer`, `interval` apart.
    pub async fn ping(&self, peer: PublicKey, count: u32, interval: Duration) -> Result<PingReport, NodeError> {
        self.try_ask(|reply| Command::Ping { peer, count, interval, reply }).await
    }

    /// Sends `data` to `peer`'s echo service and returns what comes back.
    pub async fn echo(&self, peer: PublicKey, data: Vec<u8>) -> Result<Vec<u8>, NodeError> {
        self.try_ask(|reply| Command::Echo { peer, data, reply }).await
    }

    /// Sends a file or generated bytes to `peer`'s transfer service; returns when the peer
    /// confirms (or the session fails).
    pub async fn transfer(&self, peer: PublicKey, source: Source) -> Result<TransferReport, NodeError> {
        self.try_ask(|reply| Command::Transfer { peer, source, reply }).await
    }

    /// Transfers received so far.
    pub async fn received(&self) -> Result<Vec<Received>, NodeError> {
        self.ask(|reply| Command::Received { reply }).await
    }

    /// A message to the service on `channel` at `peer`.
    pub async fn message(&self, peer: PublicKey, channel: u16, data: Vec<u8>) -> Result<(), NodeError> {
        self.try_ask(|reply| Command::Message { peer, channel, data, reply }).await
    }

    /// Starts the VPN tunnel towards `gateway`: packets sent into `port` (IPv4, from the
    /// platform's tunnel) go to the gateway, packets from it come out of `port`. Returns the
    /// address the gateway assigned (its `mtu` already the tunnel's: the smaller of the
    /// gateway's offer and the path's), or its refusal. `routes`: disjoint routes for the
    /// tunnel's session (default: the session configuration's). The tunnel lasts until
    /// [`NodeHandle::tunnel_down`] or until the platform drops its side of the port; when its
    /// session fails it is opened again (same address).
    pub async fn tunnel_up(
        &self,
        gateway: PublicKey,
        routes: Option<usize>,
        port: PacketPort,
    ) -> Result<skyroute_proto::vpn::Assignment, NodeError> {
        self.try_ask(|reply| Command::TunnelUp { gateway, routes, port, reply }).await
    }

    /// The host's network changed (the OS reports WiFi <-> LTE, an interface up or down):
    /// probe every link now and redial the ones that are down.
    pub fn network_changed(&self) -> Result<(), NodeError> {
        self.tell(Command::NetworkChanged)
    }

    /// The platform's networks now (Android `ConnectivityManager`, iOS `NWPathMonitor`): each
    /// up network gets a UDP socket bound to it and the neighbours are dialled over it at
    /// once (TCP and QUIC ones from sockets bound to it too); a network no longer listed, or listed down, takes its links down at once. Every
    /// link and session path is probed, as with [`NodeHandle::network_changed`].
    pub fn set_networks(&self, networks: Vec<crate::transport::iface::Network>) -> Result<(), NodeError> {
        self.tell(Command::Networks(networks))
    }

    /// Ends the tunnel; false if there was none.
    pub async fn tunnel_down(&self) -> Result<bool, NodeError> {
        self.ask(|reply| Command::TunnelDown { reply }).await
    }

    /// Looks `target` up in the DHT: verified records (for a service, those the lookup found
    /// plus those the first peer found passed on). `connect`: dial the node found.
    pub async fn lookup(&self, target: LookupTarget, connect: bool) -> Result<crate::control::LookupReport, NodeError> {
        self.try_ask(|reply| Command::Lookup { target, connect, reply }).await
    }

    /// The gateway fewest hops away among those the DHT knows (gateways publish
    /// `skyroute_proto::vpn::GATEWAY_SERVICE`); route finding must know a way to it.
    pub async fn nearest_gateway(&self) -> Result<PublicKey, NodeError> {
        self.try_ask(|reply| Command::NearestGateway { reply }).await
    }

    /// A nudge whenever a session is established, accepted, gains or loses a path, fails or
    /// closes (nudges coalesce: read the status to see what changed). Event-driven, so a
    /// watcher needs no timer of its own (an idle phone wakes for nothing).
    pub fn watch_sessions(&self) -> Result<mpsc::Receiver<()>, NodeError> {
        let (to, rx) = mpsc::channel(1);
        self.tell(Command::WatchSessions { to })?;
        Ok(rx)
    }

    /// Serves `channel`: messages that arrive on it come out of the returned queue.
    pub async fn register(&self, channel: u16) -> Result<mpsc::Receiver<ServiceMessage>, NodeError> {
        let (to, rx) = mpsc::channel(1024);
        self.try_ask(|reply| Command::Register { channel, to, reply }).await.map(|()| rx)
    }
}

/// A node running in a task of the current tokio runtime.
pub struct RunningNode {
    handle: NodeHandle,
    /// Node events the sessions did not take (links up and down, bare routes), in order.
    pub events: mpsc::UnboundedReceiver<Event>,
    /// Where it listens.
    pub listen: Listening,
    /// Its public key.
    pub public_key: PublicKey,
    /// The largest message a route carries.
    pub route_mtu: usize,
    /// A gateway's uplink: packets clients send out arrive here; packets for clients go in.
    pub uplink: Option<PacketPort>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The rtnetlink watcher (Linux, when the node binds to interfaces itself).
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl std::ops::Deref for RunningNode {
    type Target = NodeHandle;
    fn deref(&self) -> &NodeHandle {
        &self.handle
    }
}

impl RunningNode {
    /// Binds the transports and starts the node.
    pub async fn spawn(options: Options) -> std::io::Result<RunningNode> {
        let (commands, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, events) = mpsc::unbounded_channel();
        let (uplink, inner) = match options.gateway {
            Some(_) => {
                let (outer, inner) = PacketPort::pair(4096);
                (Some(outer), Some(inner))
            }
            None => (None, None),
        };
        let watch = matches!(options.interfaces, Policy::Auto | Policy::Named(_));
        let (driver, listen, public_key, route_mtu) = run::Driver::bind(options, cmd_rx, ev_tx, inner).await?;
        let task = tokio::spawn(driver.run());
        // The kernel tells us when interfaces or addresses change: no polling.
        let watcher = if watch {
            let tx = commands.clone();
            match crate::transport::iface::watch(move || tx.send(Command::Rescan).is_ok()) {
                Ok(w) => Some(w),
                Err(e) => {
                    // Android apps may not open rtnetlink: the platform reports networks instead.
                    tracing::warn!("not watching interfaces (changes are seen only when reported): {e}");
                    None
                }
            }
        } else {
            None
        };
        Ok(RunningNode {
            handle: NodeHandle { commands },
            events,
            listen,
            public_key,
            route_mtu,
            uplink,
            task,
            watcher,
        })
    }

    /// A handle on the node (cloneable).
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// The UDP address (the default transport).
    pub fn udp_addr(&self) -> Addr {
        Addr::Udp(self.listen.udp.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))))
    }

    /// Closes sessions and links, sends what is queued, and waits for the driver to end.
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.handle.commands.send(Command::Stop);
        if let Some(w) = &self.watcher {
            w.abort();
        }
        self.task.await.map_err(std::io::Error::other)?
    }
}
