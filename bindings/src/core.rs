//! The language-neutral core of the bindings: a node on its own tokio runtime, driven by
//! blocking calls, and the tunnel and uplink packet queues. The uniffi API ([`crate::api`])
//! and the C ABI ([`crate::c`]) are thin layers over this.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skyroute::config::Config;
use skyroute::driver::{NodeHandle, PacketPort, RunningNode};
use skyroute::tun::Framing;
use skyroute_proto::vpn::Assignment;
use skyroute_proto::PublicKey;
use tokio::sync::mpsc;

/// Every error the bindings report: the uniffi error type, and the C ABI's codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Error))]
pub enum SkyrouteError {
    #[error("bad config: {reason}")]
    BadConfig { reason: String },
    #[error("invalid argument: {reason}")]
    InvalidArgument { reason: String },
    #[error("I/O: {reason}")]
    Io { reason: String },
    #[error("the node or tunnel is stopped")]
    Stopped,
    #[error("refused: {reason}")]
    Refused { reason: String },
    #[error("timed out")]
    Timeout,
    #[error("the queue is full (try again)")]
    QueueFull,
    #[error("internal error: {reason}")]
    Internal { reason: String },
}

pub type Result<T> = std::result::Result<T, SkyrouteError>;

pub(crate) fn invalid(message: impl Into<String>) -> SkyrouteError {
    SkyrouteError::InvalidArgument { reason: message.into() }
}

/// The node library's errors as the bindings' kinds: a stopped node, a bad argument, no
/// answer in time, or a refusal with the node's reason.
impl From<skyroute::driver::NodeError> for SkyrouteError {
    fn from(e: skyroute::driver::NodeError) -> Self {
        use skyroute::driver::NodeError as E;
        match e {
            E::Stopped => SkyrouteError::Stopped,
            E::BadPeer(_) | E::UnknownAddress(_) | E::BadTarget(_) | E::ReservedChannel(_) | E::ChannelTaken(_) => {
                SkyrouteError::InvalidArgument { reason: e.to_string() }
            }
            E::NoReply(_) => SkyrouteError::Timeout,
            e => SkyrouteError::Refused { reason: e.to_string() },
        }
    }
}

/// Runs `f`, turning a panic into [`SkyrouteError::Internal`]: nothing unwinds into the
/// foreign caller.
pub fn guard<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let message = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            Err(SkyrouteError::Internal { reason: message })
        }
    }
}

/// Largest IP packet a queue takes.
pub const MAX_PACKET: usize = 65_535;
/// Packets queued each way between the platform and the node.
const QUEUE: usize = 4096;
/// How long `start_tunnel` waits for the gateway.
const TUNNEL_TIMEOUT: Duration = Duration::from_secs(30);

/// Something the platform should hear about (link and session changes, the tunnel).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum NodeEvent {
    LinkUp {
        peer: String,
    },
    LinkDown {
        peer: String,
        reason: String,
    },
    /// A session is established (or its set of live routes changed): `routes` live routes.
    SessionChanged {
        peer: String,
        established: bool,
        routes: u32,
    },
    SessionEnded {
        peer: String,
    },
    TunnelUp {
        address: String,
        mtu: u16,
    },
    TunnelDown,
}

/// Where events go (the uniffi listener, or nowhere for C).
pub type EventSink = Arc<dyn Fn(NodeEvent) + Send + Sync>;

/// A running node.
pub struct NodeCore {
    rt: tokio::runtime::Runtime,
    handle: NodeHandle,
    public_key: PublicKey,
    listen: Vec<String>,
    running: Mutex<Option<RunningNode>>,
    uplink: Mutex<Option<PacketPort>>,
    events: Option<EventSink>,
}

impl NodeCore {
    /// Starts a node with `config` (the TOML of `skyroute node`) and its identity in
    /// `data_dir` (created on first start).
    pub fn start(config: &str, data_dir: &str, events: Option<EventSink>) -> Result<Arc<NodeCore>> {
        let config = Config::parse(config).map_err(|e| SkyrouteError::BadConfig { reason: e.to_string() })?;
        if data_dir.is_empty() {
            return Err(invalid("data_dir is empty"));
        }
        let dir = PathBuf::from(data_dir);
        std::fs::create_dir_all(&dir).map_err(|e| SkyrouteError::Io { reason: format!("{data_dir}: {e}") })?;
        let key = skyroute::daemon::identity(&dir).map_err(|e| SkyrouteError::Io { reason: e.to_string() })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("skyroute")
            .enable_all()
            .build()
            .map_err(|e| SkyrouteError::Io { reason: e.to_string() })?;
        let mut node = rt
            .block_on(skyroute::daemon::start(key, &config, &dir))
            .map_err(|e| SkyrouteError::Io { reason: format!("listen: {e}") })?;
        for p in &config.peers {
            node.connect(p.key, p.addr)?;
        }
        let (_, idle) = mpsc::unbounded_channel();
        let mut node_events = std::mem::replace(&mut node.events, idle);
        let core = Arc::new(NodeCore {
            handle: node.handle(),
            public_key: node.public_key,
            listen: node.listen.list(),
            uplink: Mutex::new(node.uplink.take()),
            running: Mutex::new(Some(node)),
            events: events.clone(),
            rt,
        });
        if let Some(sink) = events {
            let handle = core.handle.clone();
            let mut nudges = handle.watch_sessions()?;
            core.rt.spawn(async move {
                let mut sessions = SessionWatch::default();
                // Session changes are read from status when the node says one happened: no
                // timer, so an idle phone is not woken.
                loop {
                    tokio::select! {
                        e = node_events.recv() => match e {
                            Some(skyroute_proto::Event::LinkUp { peer, .. }) => sink(NodeEvent::LinkUp { peer: peer.to_string() }),
                            Some(skyroute_proto::Event::LinkDown { peer, reason, .. }) => {
                                sink(NodeEvent::LinkDown { peer: peer.to_string(), reason: format!("{reason:?}").to_lowercase() })
                            }
                            Some(_) => {}
                            None => return,
                        },
                        n = nudges.recv() => match n {
                            Some(()) => match handle.status().await {
                                Ok(s) => sessions.update(&s, &*sink),
                                Err(_) => return,
                            },
                            None => return,
                        },
                    }
                }
            });
        }
        Ok(core)
    }

    #[cfg(feature = "uniffi")]
    pub(crate) fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    fn emit(&self, e: NodeEvent) {
        if let Some(s) = &self.events {
            s(e);
        }
    }

    /// The node's handle, or `Stopped`.
    fn handle(&self) -> Result<&NodeHandle> {
        match self.running.lock() {
            Ok(r) if r.is_some() => Ok(&self.handle),
            _ => Err(SkyrouteError::Stopped),
        }
    }

    pub fn public_key(&self) -> String {
        self.public_key.to_string()
    }

    pub fn address(&self) -> String {
        self.public_key.address().to_string()
    }

    pub fn listen(&self) -> Vec<String> {
        self.listen.clone()
    }

    pub fn status(&self) -> Result<skyroute::control::Status> {
        let h = self.handle()?;
        Ok(self.rt.block_on(h.status())?)
    }

    pub fn status_json(&self) -> Result<String> {
        serde_json::to_string(&self.status()?).map_err(|e| SkyrouteError::Internal { reason: e.to_string() })
    }

    pub fn connect(&self, key: &str, addr: &str) -> Result<()> {
        let key = PublicKey::from_hex(key).map_err(|_| invalid("key: not a compressed public key (66 hex digits)"))?;
        let addr = addr.parse().map_err(|e| invalid(format!("addr: {e}")))?;
        Ok(self.handle()?.connect(key, addr)?)
    }

    pub fn add_topology(&self, a: &str, b: &str) -> Result<()> {
        let a = PublicKey::from_hex(a).map_err(|_| invalid("a: not a public key"))?;
        let b = PublicKey::from_hex(b).map_err(|_| invalid("b: not a public key"))?;
        Ok(self.handle()?.add_topology(a, b)?)
    }

    pub fn network_changed(&self) -> Result<()> {
        Ok(self.handle()?.network_changed()?)
    }

    pub fn set_networks(&self, networks: Vec<skyroute::transport::iface::Network>) -> Result<()> {
        Ok(self.handle()?.set_networks(networks)?)
    }

    fn gateway_key(&self, gateway: &str) -> Result<PublicKey> {
        let h = self.handle()?;
        Ok(self.rt.block_on(h.resolve(gateway))?)
    }

    fn tunnel_up(&self, gateway: &str, routes: u32, port: PacketPort) -> Result<Assignment> {
        let gw = self.gateway_key(gateway)?;
        let routes = match routes {
            0 => None,
            1..=8 => Some(routes as usize),
            _ => return Err(invalid("routes: 0 (the configured number) or 1 to 8")),
        };
        let h = self.handle()?;
        let a = self
            .rt
            .block_on(async { tokio::time::timeout(TUNNEL_TIMEOUT, h.tunnel_up(gw, routes, port)).await })
            .map_err(|_| SkyrouteError::Timeout)??;
        Ok(a)
    }

    /// Starts the VPN tunnel to `gateway` (key or known address); packets go through the
    /// returned tunnel's queues. `routes` 0: the configured number of disjoint routes.
    pub fn start_tunnel(self: &Arc<Self>, gateway: &str, routes: u32) -> Result<Arc<TunnelCore>> {
        let (outer, inner) = PacketPort::pair(QUEUE);
        let a = self.tunnel_up(gateway, routes, inner)?;
        let mtu = skyroute::vpn::tun_mtu(&a);
        self.emit(NodeEvent::TunnelUp { address: a.address.to_string(), mtu });
        Ok(Arc::new(TunnelCore::new(self.clone(), a, mtu, Some(Queue::new(outer)))))
    }

    /// Starts the VPN tunnel with the platform's tunnel `fd` (taken over; closed when the
    /// tunnel stops): Android's VpnService fd (`Framing::Plain`), iOS utun (`AfHeader`).
    pub fn start_tunnel_fd(
        self: &Arc<Self>,
        gateway: &str,
        routes: u32,
        fd: i32,
        framing: Framing,
    ) -> Result<Arc<TunnelCore>> {
        let owned = take_fd(fd)?;
        let (outer, inner) = PacketPort::pair(QUEUE);
        let pump = self.rt.spawn(skyroute::tun::pump_fd(owned, framing, outer));
        match self.tunnel_up(gateway, routes, inner) {
            Ok(a) => {
                let mtu = skyroute::vpn::tun_mtu(&a);
                self.emit(NodeEvent::TunnelUp { address: a.address.to_string(), mtu });
                Ok(Arc::new(TunnelCore::new(self.clone(), a, mtu, None)))
            }
            Err(e) => {
                pump.abort();
                Err(e)
            }
        }
    }

    /// A gateway's uplink as a packet queue (packets clients send out come out of it; packets
    /// for clients go in): for a platform that owns its uplink (firmware, tests). Once.
    pub fn gateway_uplink(&self) -> Result<Queue> {
        self.handle()?;
        let port = self.uplink.lock().ok().and_then(|mut u| u.take());
        port.map(Queue::new)
            .ok_or_else(|| invalid("not a gateway (no [gateway] in the config), or the uplink was taken"))
    }

    fn tunnel_down(&self) -> Result<bool> {
        let h = self.handle()?;
        let was = self.rt.block_on(h.tunnel_down())?;
        if was {
            self.emit(NodeEvent::TunnelDown);
        }
        Ok(was)
    }

    /// Stops the node (sessions and links closed, peers told). Later calls get `Stopped`.
    pub fn stop(&self) -> Result<()> {
        let node = self.running.lock().map_err(|_| SkyrouteError::Stopped)?.take().ok_or(SkyrouteError::Stopped)?;
        self.rt.block_on(node.stop()).map_err(|e| SkyrouteError::Io { reason: e.to_string() })
    }
}

impl Drop for NodeCore {
    fn drop(&mut self) {
        if let Some(node) = self.running.get_mut().ok().and_then(|r| r.take()) {
            let _ = self.rt.block_on(node.stop());
        }
    }
}

/// Takes over the platform's descriptor `fd` (checked open first).
fn take_fd(fd: i32) -> Result<std::os::fd::OwnedFd> {
    if fd < 0 {
        return Err(invalid("fd: negative"));
    }
    // SAFETY: F_GETFD only reads the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(invalid(format!("fd {fd} is not an open descriptor")));
    }
    // SAFETY: open (checked above); the caller hands it over, and the pump closes it.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Session changes seen between two status snapshots.
#[derive(Default)]
struct SessionWatch {
    seen: std::collections::BTreeMap<String, (bool, u32)>,
}

impl SessionWatch {
    fn update(&mut self, s: &skyroute::control::Status, sink: &(dyn Fn(NodeEvent) + Send + Sync)) {
        let mut now = std::collections::BTreeMap::new();
        for x in &s.sessions {
            let live = x.paths.iter().filter(|p| p.state == "live").count() as u32;
            now.insert(x.peer.clone(), (x.established, live));
        }
        for (peer, v) in &now {
            if self.seen.get(peer) != Some(v) {
                sink(NodeEvent::SessionChanged { peer: peer.clone(), established: v.0, routes: v.1 });
            }
        }
        for peer in self.seen.keys().filter(|p| !now.contains_key(*p)) {
            sink(NodeEvent::SessionEnded { peer: peer.clone() });
        }
        self.seen = now;
    }
}

/// Packets both ways between the platform and the node, through blocking calls.
pub struct Queue {
    tx: mpsc::Sender<Vec<u8>>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>,
}

impl Queue {
    fn new(port: PacketPort) -> Queue {
        Queue { tx: port.tx, rx: tokio::sync::Mutex::new(port.rx) }
    }

    /// Queues one IPv4 packet; `QueueFull` when the node is behind (drop it or retry).
    pub fn send(&self, packet: &[u8]) -> Result<()> {
        if packet.is_empty() || packet.len() > MAX_PACKET {
            return Err(invalid(format!("packet of {} bytes (1 to {MAX_PACKET})", packet.len())));
        }
        self.tx.try_send(packet.to_vec()).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SkyrouteError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => SkyrouteError::Stopped,
        })
    }

    /// The next packet, waiting up to `timeout`; `None` when none came in time.
    pub fn recv(&self, rt: &tokio::runtime::Runtime, timeout: Duration) -> Result<Option<Vec<u8>>> {
        rt.block_on(async {
            let mut rx = self.rx.lock().await;
            match tokio::time::timeout(timeout, rx.recv()).await {
                Ok(Some(p)) => Ok(Some(p)),
                Ok(None) => Err(SkyrouteError::Stopped),
                Err(_) => Ok(None),
            }
        })
    }
}

/// A VPN tunnel of a node.
pub struct TunnelCore {
    node: Arc<NodeCore>,
    assignment: Assignment,
    mtu: u16,
    /// The packet calls' queue; `None` once the tunnel runs on an fd (the pump owns the
    /// packets then).
    queue: Mutex<Option<Arc<Queue>>>,
}

impl TunnelCore {
    fn new(node: Arc<NodeCore>, assignment: Assignment, mtu: u16, queue: Option<Queue>) -> TunnelCore {
        TunnelCore { node, assignment, mtu, queue: Mutex::new(queue.map(Arc::new)) }
    }

    pub fn assignment(&self) -> &Assignment {
        &self.assignment
    }

    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    fn queue(&self) -> Result<Arc<Queue>> {
        self.queue
            .lock()
            .ok()
            .and_then(|q| q.clone())
            .ok_or_else(|| invalid("this tunnel runs on an fd: packets go through the fd"))
    }

    pub fn send(&self, packet: &[u8]) -> Result<()> {
        self.queue()?.send(packet)
    }

    pub fn recv(&self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        self.queue()?.recv(&self.node.rt, timeout)
    }

    /// Moves the tunnel onto the platform's tunnel `fd` (taken over, closed when the tunnel
    /// stops): Android learns the address from [`TunnelCore::assignment`], builds its
    /// interface with it, and hands the fd over here. Packet calls end.
    pub fn attach_fd(&self, fd: i32, framing: Framing) -> Result<()> {
        let owned = take_fd(fd)?;
        let mut slot = self.queue.lock().map_err(|_| SkyrouteError::Stopped)?;
        let q = slot.take().ok_or_else(|| invalid("the tunnel is already on an fd"))?;
        let q = match Arc::try_unwrap(q) {
            Ok(q) => q,
            Err(q) => {
                *slot = Some(q);
                return Err(invalid("a packet call is in progress: attach the fd before using send/recv"));
            }
        };
        let port = PacketPort { tx: q.tx, rx: q.rx.into_inner() };
        self.node.rt.spawn(skyroute::tun::pump_fd(owned, framing, port));
        Ok(())
    }

    pub fn stats(&self) -> Result<skyroute::control::TunnelStatus> {
        self.node.status()?.tunnel.ok_or(SkyrouteError::Stopped)
    }

    /// Ends the tunnel. Later calls get `Stopped`.
    pub fn stop(&self) -> Result<()> {
        match self.node.tunnel_down()? {
            true => Ok(()),
            false => Err(SkyrouteError::Stopped),
        }
    }
}
