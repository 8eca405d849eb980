//! The tokio driver for one node over UDP: as thin as quinn's driver around quinn-proto. It
//! owns the socket and the timer, feeds datagrams and `now` into the sans-IO [`Node`], writes
//! its datagrams out, and passes its events to the application. No protocol logic lives here.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use skyroute_proto::{Class, Event, LinkState, Node, NodeConfig, PublicKey, RouteError, RouteId, SecretKey};

use crate::control::{LinkStatus, Status};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// Largest datagram the driver reads.
const RECV_BUFFER_BYTES: usize = 65_536;

enum Command {
    Connect { peer: PublicKey, addr: SocketAddr },
    OpenRoute { hops: Vec<PublicKey>, reply: oneshot::Sender<Result<RouteId, RouteError>> },
    Send { route: RouteId, class: Class, data: Vec<u8>, reply: oneshot::Sender<Result<(), RouteError>> },
    Status { reply: oneshot::Sender<Status> },
    Stop,
}

/// The application's handle on a running node.
pub struct UdpNode {
    commands: mpsc::UnboundedSender<Command>,
    /// Events from the node, in order.
    pub events: mpsc::UnboundedReceiver<Event>,
    pub local_addr: SocketAddr,
    pub public_key: PublicKey,
    pub route_mtu: usize,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

/// A cloneable handle on a running node, for tasks other than its owner.
#[derive(Clone)]
pub struct NodeHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl NodeHandle {
    /// A snapshot of the node.
    pub async fn status(&self) -> Result<Status, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Status { reply }).map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }
}

/// The driver stopped (the task ended).
#[derive(Debug, thiserror::Error)]
#[error("the node's driver is not running")]
pub struct Stopped;

impl UdpNode {
    /// Binds `bind` and runs a node on it in a task of the current tokio runtime.
    pub async fn spawn(identity: SecretKey, config: NodeConfig, bind: SocketAddr) -> io::Result<UdpNode> {
        let socket = UdpSocket::bind(bind).await?;
        let local_addr = socket.local_addr()?;
        let node = Node::new(identity, config, Box::new(rand_core::OsRng));
        let (public_key, route_mtu) = (node.public_key(), node.route_mtu());
        let (commands, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(drive(node, socket, local_addr, cmd_rx, ev_tx));
        Ok(UdpNode { commands, events, local_addr, public_key, route_mtu, task })
    }

    /// Dials a neighbour (its key and address).
    pub fn connect(&self, peer: PublicKey, addr: SocketAddr) -> Result<(), Stopped> {
        self.commands.send(Command::Connect { peer, addr }).map_err(|_| Stopped)
    }

    /// Starts building a route; watch the events for `Ready` or `Failed`.
    pub async fn open_route(&self, hops: Vec<PublicKey>) -> Result<Result<RouteId, RouteError>, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::OpenRoute { hops, reply }).map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Queues bytes on a route; `QueueFull` means wait for a `Writable` event.
    pub async fn send(&self, route: RouteId, class: Class, data: Vec<u8>) -> Result<Result<(), RouteError>, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Send { route, class, data, reply }).map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// A snapshot of the node.
    pub async fn status(&self) -> Result<Status, Stopped> {
        self.handle().status().await
    }

    /// A handle that other tasks can hold to ask for status.
    pub fn handle(&self) -> NodeHandle {
        NodeHandle { commands: self.commands.clone() }
    }

    /// Stops the driver and waits for it.
    pub async fn stop(self) -> io::Result<()> {
        let _ = self.commands.send(Command::Stop);
        self.task.await.map_err(io::Error::other)?
    }
}

async fn drive(
    mut node: Node<SocketAddr>,
    socket: UdpSocket,
    local_addr: SocketAddr,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
) -> io::Result<()> {
    let mut buf = vec![0u8; RECV_BUFFER_BYTES];
    let mut out = Vec::with_capacity(2048);
    loop {
        let now = Instant::now();
        while let Some(dst) = node.poll_transmit_into(now, &mut out) {
            // A failed send is a lost datagram: the protocol recovers, the driver goes on.
            let _ = socket.send_to(&out, dst).await;
        }
        while let Some(e) = node.poll_event() {
            let _ = events.send(e);
        }
        let timer = node.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    node.handle_datagram(Instant::now(), from, &mut buf[..n]);
                }
            }
            _ = sleep_until(timer) => node.handle_timeout(Instant::now()),
            cmd = commands.recv() => {
                let now = Instant::now();
                match cmd {
                    Some(Command::Connect { peer, addr }) => {
                        node.connect(now, peer, addr);
                    }
                    Some(Command::OpenRoute { hops, reply }) => {
                        let _ = reply.send(node.open_route(now, &hops));
                    }
                    Some(Command::Send { route, class, data, reply }) => {
                        let _ = reply.send(node.send_class(now, route, class, &data));
                    }
                    Some(Command::Status { reply }) => {
                        let _ = reply.send(status(&node, local_addr));
                    }
                    Some(Command::Stop) | None => return Ok(()),
                }
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn status(node: &Node<SocketAddr>, local: SocketAddr) -> Status {
    let reasons = |r: &skyroute_proto::RejectCounts| r.iter().map(|(k, v)| (k.name().to_string(), v)).collect();
    let (buffered_bytes, reserved_bytes) = node.buffered_bytes();
    Status {
        public_key: node.public_key().to_string(),
        address: node.address().to_string(),
        listen: vec![format!("udp {local}")],
        links: node
            .links()
            .into_iter()
            .map(|l| LinkStatus {
                peer: l.peer.to_string(),
                transport: "udp".into(),
                addr: l.addr.to_string(),
                state: match l.state {
                    LinkState::Up => "up",
                    LinkState::Connecting => "connecting",
                    LinkState::Down => "down",
                }
                .into(),
                rtt_ms: l.stats.rtt.map(|r| r.as_secs_f64() * 1e3),
                tx_packets: l.stats.tx_packets,
                rx_packets: l.stats.rx_packets,
                tx_bytes: l.stats.tx_bytes,
                rx_bytes: l.stats.rx_bytes,
                rekeys: l.stats.rekeys,
                in_flight: l.in_flight,
                rejected: reasons(&l.stats.rejected),
            })
            .collect(),
        routes: node.route_count(),
        buffered_bytes,
        reserved_bytes,
        rejected: reasons(&node.stats().rejected),
    }
}
