//! Transports: how link packets reach a neighbour. UDP sends one link packet per datagram,
//! TCP frames them with a 16-bit length on a stream, QUIC carries them as unreliable QUIC
//! datagrams. The link layer only sees an [`Addr`]; a peer is identified by its key, so a link
//! follows its peer from one transport or address to another (an authenticated packet from a
//! new `Addr` moves the link there).
//!
//! TCP and QUIC are connection-oriented: a connection per peer address, opened on first send,
//! registered with the driver when accepted, and forgotten when it closes ([`Pool`]).

pub mod iface;
pub mod pool;
#[cfg(feature = "quic")]
pub mod quic;
/// Without the `quic` feature: a QUIC transport that cannot be started.
#[cfg(not(feature = "quic"))]
#[path = "quic_off.rs"]
pub mod quic;
pub mod tcp;
pub mod udp;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use bytes::Bytes;
use tokio::sync::mpsc;

pub use pool::Pool;

/// The firewall mark on every socket of the node (0x534b, "SK"). A VPN client routes
/// everything unmarked into its tunnel, so the node's own (underlay) traffic never enters it.
pub const SOCKET_MARK: u32 = 0x534b;

/// Called with every socket the node opens, before it is used: Android's
/// `VpnService.protect(fd)` goes here, so the node's own traffic stays outside the VPN it
/// serves. Process-wide (one VPN service per process); returns false if the socket could not
/// be protected (logged).
pub type SocketHook = std::sync::Arc<dyn Fn(i32) -> bool + Send + Sync>;

static SOCKET_HOOK: std::sync::RwLock<Option<SocketHook>> = std::sync::RwLock::new(None);

/// Sets (or with `None` clears) the [`SocketHook`].
pub fn set_socket_hook(hook: Option<SocketHook>) {
    if let Ok(mut h) = SOCKET_HOOK.write() {
        *h = hook;
    }
}

/// Prepares a socket the node opened: marks it with [`SOCKET_MARK`] (needs CAP_NET_ADMIN;
/// without it the socket stays unmarked, and only a root VPN client relies on the mark) and
/// hands it to the [`SocketHook`] if one is set.
pub fn mark<'a>(socket: impl Into<socket2::SockRef<'a>>) {
    let socket = socket.into();
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket.set_mark(SOCKET_MARK) {
        tracing::trace!("socket mark not set: {e}");
    }
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        let hook = SOCKET_HOOK.read().ok().and_then(|h| h.clone());
        if let Some(hook) = hook {
            if !hook(socket.as_raw_fd()) {
                tracing::warn!("the socket hook refused socket {}", socket.as_raw_fd());
            }
        }
    }
}

/// The largest link packet any transport carries.
pub const MAX_PACKET: usize = 65_535;

/// Outgoing packets queued per connection; beyond it they are dropped (a loss the link layer
/// recovers from), so a stalled connection holds a bounded amount of memory.
pub const CONN_QUEUE: usize = 1024;

/// Packets received by all connection-oriented transports, waiting for the driver.
pub const INBOUND_QUEUE: usize = 4096;

/// A transport and an address: where a link packet goes (and, for UDP over a bound
/// interface, which of the node's interfaces it leaves through).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Addr {
    /// UDP, sent from the unbound socket.
    Udp(SocketAddr),
    /// TCP, over an unbound connection.
    Tcp(SocketAddr),
    /// QUIC, from the unbound endpoint.
    Quic(SocketAddr),
    /// UDP through the socket bound to one local interface (see [`iface`]); the link stays on
    /// that interface.
    UdpOn(skyroute_proto::Interface, SocketAddr),
    /// TCP over a connection whose socket is bound to one local interface.
    TcpOn(skyroute_proto::Interface, SocketAddr),
    /// QUIC through an endpoint whose socket is bound to one local interface.
    QuicOn(skyroute_proto::Interface, SocketAddr),
}

impl skyroute_proto::Endpoint for Addr {
    fn interface(&self) -> skyroute_proto::Interface {
        match self {
            Addr::UdpOn(i, _) | Addr::TcpOn(i, _) | Addr::QuicOn(i, _) => *i,
            _ => skyroute_proto::Interface::UNBOUND,
        }
    }

    /// Transport, interface, IP address and port: a cookie is good only where it was sent.
    fn write_source(&self, out: &mut Vec<u8>) {
        let kind = match self {
            Addr::Udp(_) => 0,
            Addr::Tcp(_) => 1,
            Addr::Quic(_) => 2,
            Addr::UdpOn(..) => 3,
            Addr::TcpOn(..) => 4,
            Addr::QuicOn(..) => 5,
        };
        out.extend_from_slice(&[kind, skyroute_proto::Endpoint::interface(self).0]);
        self.write_host_ip(out, false);
        out.extend_from_slice(&self.socket().port().to_be_bytes());
    }

    /// The IPv4 address, or the IPv6 /64 (a host picks its port, and often its address
    /// within its /64, freely), as WireGuard's rate limiter.
    fn write_host(&self, out: &mut Vec<u8>) {
        self.write_host_ip(out, true);
    }
}

impl Addr {
    fn write_host_ip(&self, out: &mut Vec<u8>, v6_prefix_only: bool) {
        match self.socket().ip() {
            std::net::IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
            std::net::IpAddr::V6(ip) => {
                let o = ip.octets();
                out.extend_from_slice(if v6_prefix_only { &o[..8] } else { &o[..] });
            }
        }
    }
}

/// The transports, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// UDP: one link packet per datagram.
    Udp,
    /// TCP: link packets framed on a stream.
    Tcp,
    /// QUIC: link packets as unreliable QUIC datagrams.
    Quic,
}

impl Kind {
    /// The transport's name (`udp`, `tcp`, `quic`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Udp => "udp",
            Kind::Tcp => "tcp",
            Kind::Quic => "quic",
        }
    }

    /// The address `addr` over this transport.
    pub fn at(self, addr: SocketAddr) -> Addr {
        match self {
            Kind::Udp => Addr::Udp(addr),
            Kind::Tcp => Addr::Tcp(addr),
            Kind::Quic => Addr::Quic(addr),
        }
    }
}

/// A transport address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// The scheme is not `udp`, `tcp` or `quic`.
    #[error("unknown transport {0:?} (udp, tcp or quic)")]
    Transport(String),
    /// The rest is not an IP address and port.
    #[error("not an address and port: {0:?}")]
    Address(String),
}

impl FromStr for Kind {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Kind, AddrError> {
        match s {
            "udp" => Ok(Kind::Udp),
            "tcp" => Ok(Kind::Tcp),
            "quic" => Ok(Kind::Quic),
            _ => Err(AddrError::Transport(s.to_string())),
        }
    }
}

impl Addr {
    /// The transport.
    pub fn kind(&self) -> Kind {
        match self {
            Addr::Udp(_) | Addr::UdpOn(..) => Kind::Udp,
            Addr::Tcp(_) | Addr::TcpOn(..) => Kind::Tcp,
            Addr::Quic(_) | Addr::QuicOn(..) => Kind::Quic,
        }
    }

    /// The IP address and port.
    pub fn socket(&self) -> SocketAddr {
        match self {
            Addr::Udp(a) | Addr::Tcp(a) | Addr::Quic(a) => *a,
            Addr::UdpOn(_, a) | Addr::TcpOn(_, a) | Addr::QuicOn(_, a) => *a,
        }
    }

    /// The same transport and address through the local interface `i`.
    pub fn on(&self, i: skyroute_proto::Interface) -> Addr {
        let a = self.socket();
        match self.kind() {
            Kind::Udp => Addr::UdpOn(i, a),
            Kind::Tcp => Addr::TcpOn(i, a),
            Kind::Quic => Addr::QuicOn(i, a),
        }
    }

    /// Whether the address names no local interface (the OS picks the way out).
    pub fn is_unbound(&self) -> bool {
        matches!(self, Addr::Udp(_) | Addr::Tcp(_) | Addr::Quic(_))
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.kind().name(), self.socket())
    }
}

/// `udp://1.2.3.4:5`, `tcp://...`, `quic://...`, or a bare `1.2.3.4:5` (UDP).
impl FromStr for Addr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Addr, AddrError> {
        let (kind, rest) = match s.split_once("://") {
            Some((k, r)) => (k.parse::<Kind>()?, r),
            None => (Kind::Udp, s),
        };
        let addr = rest.parse::<SocketAddr>().map_err(|_| AddrError::Address(rest.to_string()))?;
        Ok(kind.at(addr))
    }
}

/// What connection-oriented transports tell the driver.
pub enum Inbound {
    /// A link packet from a peer.
    Packet(Addr, Vec<u8>),
    /// A connection is open (accepted or dialled): packets for `Addr` go to this queue.
    Connected(Addr, mpsc::Sender<Bytes>),
    /// The connection to `Addr` closed; `.1` says why (for logs).
    Closed(Addr, String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_round_trip() {
        for s in ["udp://127.0.0.1:7070", "tcp://[::1]:1", "quic://10.0.0.1:9"] {
            assert_eq!(s.parse::<Addr>().unwrap().to_string(), s);
        }
        assert_eq!("127.0.0.1:1".parse::<Addr>().unwrap(), Addr::Udp("127.0.0.1:1".parse().unwrap()));
        assert!("sctp://127.0.0.1:1".parse::<Addr>().is_err());
        assert!("tcp://nope".parse::<Addr>().is_err());
    }
}
