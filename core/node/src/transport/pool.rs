//! Connections of the connection-oriented transports, by peer address.

use std::collections::HashMap;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{quic::Quic, tcp::Tcp, Addr};

/// Why an outgoing packet was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The connection's queue is full.
    Full,
    /// That transport is not running on this node.
    NoTransport,
}

/// Open connections and the transports that open more.
pub struct Pool {
    conns: HashMap<Addr, mpsc::Sender<Bytes>>,
    /// The TCP transport, if on (dials new connections).
    pub tcp: Option<Tcp>,
    /// The QUIC transport, if on.
    pub quic: Option<Quic>,
}

impl Pool {
    /// A pool with no connections yet.
    pub fn new(tcp: Option<Tcp>, quic: Option<Quic>) -> Self {
        Pool { conns: HashMap::new(), tcp, quic }
    }

    /// A connection to `addr` is open: packets for it go to `tx`.
    pub fn connected(&mut self, addr: Addr, tx: mpsc::Sender<Bytes>) {
        self.conns.insert(addr, tx);
    }

    /// The connection to `addr` closed.
    pub fn closed(&mut self, addr: &Addr) {
        if self.conns.get(addr).is_some_and(|tx| tx.is_closed()) {
            self.conns.remove(addr);
        }
    }

    /// Forgets the connections opened through local interface `i` (it went away): their
    /// queues close, so their tasks end, and a returning interface dials afresh.
    pub fn drop_interface(&mut self, i: skyroute_proto::Interface) {
        self.conns.retain(|a, _| skyroute_proto::Endpoint::interface(a) != i);
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Queues a packet for a TCP or QUIC peer, dialling it if there is no connection.
    pub fn send(&mut self, addr: Addr, packet: &[u8]) -> Result<(), Dropped> {
        let (tcp, quic) = (self.tcp.clone(), self.quic.clone());
        self.send_via(addr, packet, || match addr {
            Addr::Tcp(a) => tcp.map(|t| t.dial(a)),
            Addr::Quic(a) => quic.map(|q| q.dial(a)),
            _ => None,
        })
    }

    /// Queues a packet for `addr` on its connection, opening one with `dial` if there is none
    /// (`None`: no transport for it).
    pub fn send_via(
        &mut self,
        addr: Addr,
        packet: &[u8],
        dial: impl FnOnce() -> Option<mpsc::Sender<Bytes>>,
    ) -> Result<(), Dropped> {
        if let Some(tx) = self.conns.get(&addr) {
            match tx.try_send(Bytes::copy_from_slice(packet)) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => return Err(Dropped::Full),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.conns.remove(&addr);
                }
            }
        }
        let tx = dial().ok_or(Dropped::NoTransport)?;
        let r = tx.try_send(Bytes::copy_from_slice(packet)).map_err(|_| Dropped::Full);
        self.conns.insert(addr, tx);
        r
    }
}
