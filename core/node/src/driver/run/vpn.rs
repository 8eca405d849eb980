//! The VPN on a running node: the gateway service (admission, per-key addresses, checks, NAT'd
//! uplink through a packet port) and the tunnel client (a platform's packets through a packet
//! port). The decisions are `skyroute_proto::vpn`'s; this file moves packets between the
//! sessions and the ports.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use skyroute_proto::channel;
use skyroute_proto::vpn::{self, Gateway, Message, Outbound, TunnelClient};
use skyroute_proto::{Class, PublicKey, SessionId};
use tokio::sync::oneshot;

use super::Driver;
use crate::control::{GatewayClientStatus, GatewayStatus, TunnelStatus};
use crate::driver::{NodeError, PacketPort};

/// Budget of a realtime (deadline) packet: a late small packet is as good as lost.
const REALTIME_BUDGET: Duration = Duration::from_millis(400);

pub(in crate::driver) struct GatewayState {
    pub gw: Gateway,
    pub port: PacketPort,
    /// The session each admitted client uses.
    pub sessions: BTreeMap<PublicKey, SessionId>,
}

pub(in crate::driver) struct TunnelState {
    pub client: TunnelClient,
    pub gateway: PublicKey,
    pub routes: Option<usize>,
    pub session: SessionId,
    /// Sessions opened again after the one before failed.
    pub reconnects: u64,
    pub port: PacketPort,
    pub waiting: Option<oneshot::Sender<Result<vpn::Assignment, NodeError>>>,
}

impl Driver {
    /// Sends a gateway message on `session` in `class`: realtime as a deadline datagram (the
    /// stream if no path can take it now), bulk on the stream.
    fn vpn_send(&mut self, now: Instant, session: SessionId, class: Class, m: &Message) {
        let payload = m.encode();
        if class == Class::Realtime {
            let framed = channel::framed(vpn::CHANNEL, &payload);
            if let Ok(true) = self.host.send_datagram(now, session, &framed, REALTIME_BUDGET) {
                return;
            }
        }
        self.send_on(session, vpn::CHANNEL, &payload);
    }

    pub(super) fn on_vpn(&mut self, now: Instant, session: SessionId, peer: PublicKey, payload: &[u8]) {
        let Ok(m) = Message::decode(payload) else {
            self.count("vpn_malformed");
            return;
        };
        match m {
            Message::Hello => {
                let reply = match &mut self.gateway {
                    None => Message::Refused("this node is not a gateway".into()),
                    Some(g) => match g.gw.hello(now, &peer) {
                        Ok(a) => {
                            g.sessions.insert(peer, session);
                            tracing::info!(peer = %super::short(&peer), address = %a.address, "gateway: client admitted");
                            Message::Assigned(a)
                        }
                        Err(r) => {
                            tracing::info!(peer = %super::short(&peer), "gateway: refused: {r}");
                            Message::Refused(r.to_string())
                        }
                    },
                };
                self.send_on(session, vpn::CHANNEL, &reply.encode());
            }
            Message::Packet(p) => {
                // At a gateway, from an admitted client on its own session; at a client, from
                // the gateway it asked.
                if let Some(g) = self.gateway.as_mut().filter(|g| g.sessions.get(&peer) == Some(&session)) {
                    match g.gw.from_client(now, &peer, &p) {
                        Ok(()) => {
                            if g.port.tx.try_send(p).is_err() {
                                self.count("gateway_uplink_full");
                            }
                        }
                        Err(_) => self.count("gateway_dropped"),
                    }
                } else if let Some(t) = self.tunnel.as_mut().filter(|t| t.session == session) {
                    match t.client.inbound(&p) {
                        Ok(()) => {
                            if t.port.tx.try_send(p).is_err() {
                                self.count("tunnel_port_full");
                            }
                        }
                        Err(_) => self.count("tunnel_dropped"),
                    }
                } else {
                    self.count("vpn_unexpected");
                }
            }
            Message::Assigned(a) => match self.tunnel.as_mut().filter(|t| t.session == session) {
                Some(t) => {
                    tracing::info!(address = %a.address, mtu = a.mtu, "tunnel: address assigned");
                    t.client.assigned(a.clone());
                    if let Some(w) = t.waiting.take() {
                        // The caller gets the tunnel MTU it must use: the smaller of the
                        // gateway's offer and the path's.
                        let _ = w.send(Ok(vpn::Assignment { mtu: t.client.mtu(), ..a }));
                    }
                }
                None => self.count("vpn_unexpected"),
            },
            Message::Refused(why) => match self.tunnel.as_mut().filter(|t| t.session == session) {
                Some(t) => {
                    tracing::warn!("tunnel: the gateway refused: {why}");
                    if let Some(w) = t.waiting.take() {
                        let _ = w.send(Err(NodeError::GatewayRefused(why.to_string())));
                    }
                    self.tunnel = None;
                }
                None => self.count("vpn_unexpected"),
            },
        }
    }

    /// A packet from the gateway's uplink (the internet side).
    pub(super) fn gateway_from_net(&mut self, now: Instant, p: Vec<u8>) {
        let Some(g) = self.gateway.as_mut() else { return };
        let Ok(key) = g.gw.to_client(now, &p) else {
            self.count("gateway_dropped");
            return;
        };
        let Some(&session) = g.sessions.get(&key) else { return };
        let class = if p.len() <= vpn::client::REALTIME_MAX { Class::Realtime } else { Class::Bulk };
        self.vpn_send(now, session, class, &Message::Packet(p));
    }

    /// A packet the platform read from its tunnel.
    pub(super) fn tunnel_from_app(&mut self, now: Instant, p: Vec<u8>) {
        let Some(t) = self.tunnel.as_mut() else { return };
        let session = t.session;
        match t.client.outbound(p) {
            Ok(out) => {
                for o in out {
                    match o {
                        Outbound::Send { class, packet } => {
                            self.vpn_send(now, session, class, &Message::Packet(packet))
                        }
                        Outbound::Reply(icmp) => {
                            if let Some(t) = &self.tunnel {
                                let _ = t.port.tx.try_send(icmp);
                            }
                        }
                    }
                }
            }
            Err(_) => self.count("tunnel_dropped"),
        }
    }

    /// Starts the tunnel towards `gateway`; the reply comes when the gateway answers.
    pub(super) fn tunnel_up(
        &mut self,
        now: Instant,
        gateway: PublicKey,
        routes: Option<usize>,
        port: PacketPort,
        reply: oneshot::Sender<Result<vpn::Assignment, NodeError>>,
    ) {
        if self.tunnel.is_some() {
            let _ = reply.send(Err(NodeError::TunnelExists));
            return;
        }
        let session = match self.session_with_routes(now, gateway, routes) {
            Ok(s) => s,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        // The gateway's offer decides the tunnel MTU: packets over the realtime size ride the
        // session's coded stream, packed back to back into symbols, so no underlay datagram
        // bounds them (the realtime ones, at most 256 bytes, fit any route).
        self.tunnel = Some(TunnelState {
            client: TunnelClient::new(MAX_TUNNEL_MTU),
            gateway,
            routes,
            session,
            reconnects: 0,
            port,
            waiting: Some(reply),
        });
        self.send_on(session, vpn::CHANNEL, &Message::Hello.encode());
    }

    /// Ends the tunnel (the platform's side of the port is dropped); false if there was none.
    pub(super) fn tunnel_down(&mut self) -> bool {
        match self.tunnel.take() {
            Some(t) => {
                tracing::info!(gateway = %super::short(&t.gateway), "tunnel: down");
                if let Some(w) = t.waiting {
                    let _ = w.send(Err(NodeError::TunnelDown));
                }
                true
            }
            None => false,
        }
    }

    /// A session ended: a gateway forgets the client's session; a tunnel that was up opens a new
    /// session to its gateway and asks again (the gateway gives the same key the same
    /// address, so the platform's connections carry on); one still waiting for its first
    /// answer fails.
    pub(super) fn vpn_session_gone(&mut self, now: Instant, session: SessionId) {
        // The gateway keeps the client's address and counters for when it comes back.
        if let Some(g) = self.gateway.as_mut() {
            g.sessions.retain(|_, s| *s != session);
        }
        let Some(t) = self.tunnel.as_mut().filter(|t| t.session == session) else { return };
        if let Some(w) = t.waiting.take() {
            let _ = w.send(Err(NodeError::GatewaySessionEnded));
            self.tunnel = None;
            return;
        }
        let (gateway, routes) = (t.gateway, t.routes);
        match self.session_with_routes(now, gateway, routes) {
            Ok(s) => {
                tracing::warn!(gateway = %super::short(&gateway), "tunnel: session ended, opening another");
                if let Some(t) = self.tunnel.as_mut() {
                    t.session = s;
                    t.reconnects += 1;
                }
                self.send_on(s, vpn::CHANNEL, &Message::Hello.encode());
            }
            Err(e) => {
                tracing::warn!("tunnel: no session to the gateway: {e}; the tunnel is down");
                self.tunnel = None;
            }
        }
    }

    pub(super) fn gateway_status(&self) -> Option<GatewayStatus> {
        let g = self.gateway.as_ref()?;
        Some(GatewayStatus {
            address: g.gw.address().to_string(),
            address6: g.gw.address6().map(|a| a.to_string()),
            refused: g.gw.refused,
            clients: g
                .gw
                .stats()
                .map(|(k, addr, s)| GatewayClientStatus {
                    key: k.to_string(),
                    address: addr.to_string(),
                    address6: g.gw.client_address6(k).map(|a| a.to_string()),
                    bytes_up: s.bytes_up,
                    bytes_down: s.bytes_down,
                    packets_up: s.packets_up,
                    packets_down: s.packets_down,
                    dropped_spoofed: s.dropped_spoofed,
                    dropped_forbidden: s.dropped_forbidden,
                    dropped_rate: s.dropped_rate,
                    dropped_malformed: s.dropped_malformed,
                })
                .collect(),
        })
    }

    pub(super) fn tunnel_status(&self) -> Option<TunnelStatus> {
        let t = self.tunnel.as_ref()?;
        let s = t.client.stats;
        Some(TunnelStatus {
            gateway: t.gateway.to_string(),
            address: t.client.address().map(|a| a.to_string()),
            address6: t.client.address6().map(|a| a.to_string()),
            mtu: t.client.mtu(),
            reconnects: t.reconnects,
            packets_out: s.packets_out,
            packets_in: s.packets_in,
            bytes_out: s.bytes_out,
            bytes_in: s.bytes_in,
            realtime_out: s.realtime_out,
            fragmented: s.fragmented,
            frag_needed_sent: s.frag_needed_sent,
            mss_clamped: s.mss_clamped,
            ipv6_out: s.ipv6_out,
            unreachable_sent: s.unreachable_sent,
            dropped: s.dropped,
        })
    }
}

/// The largest tunnel MTU a client accepts (a gateway's `mtu` is at most this too).
const MAX_TUNNEL_MTU: u16 = 9000;
