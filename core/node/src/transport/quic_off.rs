//! The QUIC transport when the node library is built without the `quic` feature: starting
//! or binding one fails with an error that names the feature, so a configuration that asks
//! for QUIC is refused at start instead of silently running without it. No value of [`Quic`]
//! can exist, so nothing else needs a `cfg`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::Inbound;

/// Accepted connections (and handshakes in progress) held at once (as with the feature).
pub const MAX_CONNS: usize = 256;
/// UDP payload of a QUIC packet (as with the feature).
pub const QUIC_MTU: u16 = 1470;

/// No QUIC transport (built without the `quic` feature).
#[derive(Clone)]
pub struct Quic {
    /// Packets larger than the connection's datagram limit (never any).
    pub too_large: std::sync::Arc<AtomicU64>,
    never: Infallible,
}

fn not_built() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::Unsupported, "built without the `quic` feature: no QUIC transport")
}

impl Quic {
    /// Always fails: the library was built without QUIC.
    pub fn start(_addr: SocketAddr, _inbound: mpsc::Sender<Inbound>) -> std::io::Result<Quic> {
        Err(not_built())
    }

    /// Always fails: the library was built without QUIC.
    pub fn bound(
        _net: &super::iface::Network,
        _on: skyroute_proto::Interface,
        _inbound: mpsc::Sender<Inbound>,
    ) -> std::io::Result<Quic> {
        Err(not_built())
    }

    /// Unreachable: no `Quic` exists.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self.never {}
    }

    /// Unreachable: no `Quic` exists.
    pub fn dial(&self, _addr: SocketAddr) -> mpsc::Sender<Bytes> {
        match self.never {}
    }

    /// Unreachable: no `Quic` exists.
    pub fn close(&self) {
        match self.never {}
    }
}
