//! Every radio at once: one UDP socket per local network, bound to it (and, when a neighbour
//! is dialled over TCP or QUIC, a bound TCP socket per connection or a bound QUIC endpoint),
//! and the node's neighbours dialled over each (a link per neighbour and network). Networks come from the
//! OS (Linux: [`iface::scan`] on start and on every rtnetlink change) or from the platform
//! (the bindings' `network_changed`). A network that goes takes its links down at once; one
//! that comes is dialled over at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skyroute_proto::{Interface, PublicKey};
use tokio::sync::mpsc;

use super::Driver;
use crate::control::NetworkStatus;
use crate::transport::iface::{self, Network, Policy};
use crate::transport::quic::Quic;
use crate::transport::{Addr, Inbound};

/// A socket bound to one network, and the task that reads it.
pub(super) struct Bound {
    net: Network,
    pub(super) socket: Arc<tokio::net::UdpSocket>,
    task: tokio::task::JoinHandle<()>,
    /// A QUIC endpoint bound to the network, opened for the first QUIC neighbour.
    quic: Option<Quic>,
}

impl Drop for Bound {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(q) = &self.quic {
            q.close();
        }
    }
}

pub(super) struct Radios {
    pub(super) policy: Policy,
    /// Up networks by slot (the link layer's interface number).
    pub(super) bound: BTreeMap<u8, Bound>,
    /// Every network seen, by id: its slot (kept while it is down, so it comes back on the
    /// same slot and its parked links resume) and what was last known of it.
    known: BTreeMap<u64, (u8, Network)>,
    /// Neighbours we dial (their unbound address), dialled again over every network that
    /// comes up.
    peers: BTreeMap<PublicKey, Addr>,
    inbound: mpsc::Sender<Inbound>,
}

impl Radios {
    pub(super) fn new(policy: Policy, inbound: mpsc::Sender<Inbound>) -> Radios {
        Radios { policy, bound: BTreeMap::new(), known: BTreeMap::new(), peers: BTreeMap::new(), inbound }
    }

    /// Whether a neighbour at `a` is dialled over the bound networks: the platform's choice
    /// always; the OS's interfaces not for loopback (tests, local tools).
    fn over_networks(&self, a: &SocketAddr) -> bool {
        match self.policy {
            Policy::Off => false,
            Policy::Platform => true,
            Policy::Auto | Policy::Named(_) => !a.ip().is_loopback(),
        }
    }

    /// The name of the network on `slot`, for status.
    pub(super) fn name(&self, slot: Interface) -> Option<String> {
        self.known.values().find(|(s, _)| *s == slot.0).map(|(_, n)| n.name.clone())
    }

    pub(super) fn status(&self) -> Vec<NetworkStatus> {
        self.known
            .values()
            .map(|(slot, n)| NetworkStatus {
                name: n.name.clone(),
                kind: n.kind.name().into(),
                metered: n.metered,
                up: self.bound.contains_key(slot),
                slot: *slot,
            })
            .collect()
    }

    /// A free slot for a new network: one never used, else one whose network is down.
    fn slot_for(&self, id: u64) -> Option<u8> {
        if let Some((s, _)) = self.known.get(&id) {
            return Some(*s);
        }
        let used: Vec<u8> = self.known.values().map(|(s, _)| *s).collect();
        (1..=255u8).find(|s| !used.contains(s)).or_else(|| (1..=255u8).find(|s| !self.bound.contains_key(s)))
    }
}

/// Reads one bound socket into the driver's inbound queue.
async fn recv_loop(socket: Arc<tokio::net::UdpSocket>, slot: u8, tx: mpsc::Sender<Inbound>) {
    let mut buf = vec![0u8; crate::transport::MAX_PACKET];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let addr = Addr::UdpOn(Interface(slot), from);
                if tx.send(Inbound::Packet(addr, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
            // An ICMP error or a network going away: not a reason to stop, nor to spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

impl Driver {
    /// Dials a neighbour: neighbours off loopback go over every bound network (a link each,
    /// on the transport of `addr`); anything else, or a node with no bound networks and
    /// nothing to wait for, as before (one unbound link).
    pub(super) fn dial(&mut self, now: Instant, peer: PublicKey, addr: Addr) {
        if addr.is_unbound() {
            let r = &mut self.radios;
            if r.policy != Policy::Off {
                // Remembered even when dialled unbound: the platform may hand in networks later.
                r.peers.insert(peer, addr);
            }
            if r.over_networks(&addr.socket()) {
                let slots: Vec<u8> = r.bound.keys().copied().collect();
                let waits = matches!(r.policy, Policy::Named(_) | Policy::Platform);
                if !slots.is_empty() || waits {
                    for s in slots {
                        self.host.node_mut(now).connect(now, peer, addr.on(Interface(s)));
                    }
                    return;
                }
            }
        }
        self.host.node_mut(now).connect(now, peer, addr);
    }

    /// Sends a link packet over TCP or QUIC through a bound network: on the connection to it
    /// from that network, opened (from a bound socket, or the network's QUIC endpoint) if
    /// there is none.
    pub(super) fn send_bound(&mut self, dst: Addr, packet: &[u8]) {
        let slot = skyroute_proto::Endpoint::interface(&dst);
        let Some(b) = self.radios.bound.get_mut(&slot.0) else {
            self.count("no_transport");
            return;
        };
        let net = b.net.clone();
        let inbound = self.radios.inbound.clone();
        let r = match dst {
            Addr::TcpOn(..) => {
                let tcp = self.pool.tcp.clone();
                self.pool.send_via(dst, packet, || tcp.map(|t| t.dial_on(dst, net)))
            }
            Addr::QuicOn(_, a) => {
                if b.quic.is_none() {
                    match Quic::bound(&net, slot, inbound) {
                        Ok(q) => b.quic = Some(q),
                        Err(e) => tracing::warn!(interface = %net.name, "no QUIC endpoint on it: {e}"),
                    }
                }
                let quic = b.quic.clone();
                self.pool.send_via(dst, packet, || quic.map(|q| q.dial(a)))
            }
            _ => return,
        };
        match r {
            Ok(()) => {}
            Err(crate::transport::pool::Dropped::Full) => self.count("send_queue_full"),
            Err(crate::transport::pool::Dropped::NoTransport) => self.count("no_transport"),
        }
    }

    /// Reads the OS's interfaces again (Linux: the rtnetlink watcher calls this on every
    /// change) and applies what the policy selects.
    pub(super) fn rescan(&mut self, now: Instant) {
        if matches!(self.radios.policy, Policy::Off | Policy::Platform) {
            return;
        }
        match iface::scan() {
            Ok(os) => {
                let nets = iface::select(&self.radios.policy, &os, &iface::default_route_interfaces());
                self.apply_networks(now, nets);
                // A route may have come back: links still down try now, not at their next retry.
                self.host.node_mut(now).redial(now);
            }
            Err(e) => tracing::warn!("listing interfaces: {e}"),
        }
    }

    /// The platform's networks now (the bindings' `network_changed`): from here on the
    /// platform decides which networks the node uses.
    pub(super) fn set_networks(&mut self, now: Instant, nets: Vec<Network>) {
        self.radios.policy = Policy::Platform;
        self.apply_networks(now, nets);
        self.host.network_changed(now);
    }

    /// Brings the bound sockets in line with `nets`: gone or down networks take their links
    /// down at once; new ones get a socket and are dialled over at once.
    fn apply_networks(&mut self, now: Instant, nets: Vec<Network>) {
        let up: Vec<&Network> = nets.iter().filter(|n| n.up).collect();
        let gone: Vec<u8> =
            self.radios.bound.iter().filter(|(_, b)| !up.iter().any(|n| n.id == b.net.id)).map(|(s, _)| *s).collect();
        for slot in gone {
            if let Some(b) = self.radios.bound.remove(&slot) {
                tracing::info!(interface = %b.net.name, "network gone: its links are down");
                self.count("interfaces_down");
            }
            self.host.node_mut(now).interface_down(now, Interface(slot));
            self.pool.drop_interface(Interface(slot));
        }
        for net in nets {
            let Some(slot) = self.radios.slot_for(net.id) else {
                self.count("interfaces_refused");
                continue;
            };
            self.host.node_mut(now).set_metered(Interface(slot), net.metered);
            if net.up && !self.radios.bound.contains_key(&slot) {
                match iface::bind_udp(&net)
                    .map_err(|e| e.to_string())
                    .and_then(|s| tokio::net::UdpSocket::from_std(s).map_err(|e| e.to_string()))
                {
                    Ok(socket) => {
                        let socket = Arc::new(socket);
                        let task = tokio::spawn(recv_loop(socket.clone(), slot, self.radios.inbound.clone()));
                        tracing::info!(interface = %net.name, slot, kind = net.kind.name(), "network up: dialling over it");
                        self.radios.bound.insert(slot, Bound { net: net.clone(), socket, task, quic: None });
                        self.count("interfaces_up");
                        self.host.node_mut(now).interface_up(now, Interface(slot));
                        let peers: Vec<(PublicKey, Addr)> = self
                            .radios
                            .peers
                            .iter()
                            .filter(|(_, a)| self.radios.over_networks(&a.socket()))
                            .map(|(k, a)| (*k, *a))
                            .collect();
                        for (peer, a) in peers {
                            self.host.node_mut(now).connect(now, peer, a.on(Interface(slot)));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(interface = %net.name, "cannot bind a socket to it: {e}");
                        self.count("bind_errors");
                    }
                }
            } else if let Some(b) = self.radios.bound.get_mut(&slot) {
                b.net = net.clone();
            }
            self.radios.known.insert(net.id, (slot, net));
        }
        // Bound networks replace the unbound links we dialled to the same neighbours (made
        // before any network was known): those would use whatever the OS routes, one radio
        // for all. Links the neighbours made to us are theirs to keep.
        if !self.radios.bound.is_empty() {
            let peers: Vec<PublicKey> = self
                .radios
                .peers
                .iter()
                .filter(|(_, a)| self.radios.over_networks(&a.socket()))
                .map(|(k, _)| *k)
                .collect();
            for peer in peers {
                for id in self.host.node().links_to(&peer) {
                    if self.host.node().link(id).is_some_and(|l| l.dialled && l.addr.is_unbound()) {
                        self.host.node_mut(now).close_link(now, id);
                    }
                }
            }
        }
    }
}
