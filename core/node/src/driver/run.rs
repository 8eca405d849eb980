//! The driver's event loop.

mod dht;
mod discovery;
mod pay;
mod radios;
mod vpn;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use skyroute_proto::{Event, Host, HostConfig, HostEvent, PublicKey, SessionEvent, SessionId};
use tokio::sync::{mpsc, oneshot};

use super::{Command, Listening, NodeError, Options};
use crate::control::{LinkStatus, PathStatus, PingReport, ServiceMessage, SessionStatus, Status, TransferReport};
use crate::service::transfer::{self, Outcome, Outgoing};
use crate::service::{self, Conn, Control, Exchange};
use crate::transport::{quic::Quic, tcp::Tcp, udp::Udp, Addr, Inbound, Pool, INBOUND_QUEUE};

/// Packets from TCP and QUIC taken in one go before the node's output is sent.
const RECV_BATCH: usize = 64;
/// Transfer messages queued ahead of a session's stream.
const TRANSFER_AHEAD: usize = 256 * 1024;
/// Graph cost of our own links and of configured topology.
const LINK_COST: u32 = 10;
/// How long a ping or echo waits for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for a session to be established.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

struct PingJob {
    peer: PublicKey,
    session: SessionId,
    count: u32,
    sent: u32,
    interval: Duration,
    next_at: Instant,
    created: Instant,
    established_at: Option<Instant>,
    outstanding: BTreeMap<u64, Instant>,
    rtts: Vec<f64>,
    reply: oneshot::Sender<Result<PingReport, NodeError>>,
}

struct EchoJob {
    session: SessionId,
    deadline: Instant,
    reply: oneshot::Sender<Result<Vec<u8>, NodeError>>,
}

struct SendJob {
    peer: PublicKey,
    session: SessionId,
    out: Outgoing,
    started: Instant,
    reply: oneshot::Sender<Result<TransferReport, NodeError>>,
}

pub(super) struct Driver {
    host: Host<Addr>,
    me: PublicKey,
    listen: Listening,
    udp: Option<Udp>,
    /// UDP sockets bound to each local network, and the neighbours dialled over them.
    radios: radios::Radios,
    pool: Pool,
    inbound: mpsc::Receiver<Inbound>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
    /// Nudged on every session lifecycle change (see `NodeHandle::watch_sessions`).
    session_watch: Option<mpsc::Sender<()>>,
    /// Channel state of every session (ours and accepted).
    conns: BTreeMap<SessionId, Conn>,
    /// Sessions we opened, by destination.
    to_peer: BTreeMap<PublicKey, SessionId>,
    pings: BTreeMap<u64, PingJob>,
    /// Outstanding ping requests: request id -> job id.
    ping_ids: BTreeMap<u64, u64>,
    echoes: BTreeMap<u64, EchoJob>,
    sends: BTreeMap<u64, SendJob>,
    receiver: transfer::Receiver,
    services: BTreeMap<u16, mpsc::Sender<ServiceMessage>>,
    next_id: u64,
    counters: BTreeMap<&'static str, u64>,
    gateway: Option<vpn::GatewayState>,
    tunnel: Option<vpn::TunnelState>,
    discovery: discovery::Discovery,
    dht: dht::DhtState,
    pay: pay::PayState,
}

impl Driver {
    pub(super) async fn bind(
        o: Options,
        commands: mpsc::UnboundedReceiver<Command>,
        events: mpsc::UnboundedSender<Event>,
        uplink: Option<super::PacketPort>,
    ) -> std::io::Result<(Driver, Listening, PublicKey, usize)> {
        let (in_tx, inbound) = mpsc::channel(INBOUND_QUEUE);
        let mut listen = Listening::default();
        let udp = match o.udp {
            Some(a) => {
                let s = Udp::bind(a)?;
                listen.udp = Some(s.local_addr()?);
                Some(s)
            }
            None => None,
        };
        let tcp = match o.tcp {
            Some(a) => {
                let l = tokio::net::TcpListener::bind(a).await?;
                // Accepted connections inherit the mark.
                crate::transport::mark(&l);
                listen.tcp = Some(l.local_addr()?);
                Some(Tcp::start(l, in_tx.clone()))
            }
            None => None,
        };
        let quic = match o.quic {
            Some(a) => {
                let q = Quic::start(a, in_tx.clone())?;
                listen.quic = Some(q.local_addr()?);
                Some(q)
            }
            None => None,
        };
        let discovery = discovery::Discovery::new(o.discovery, o.identity.clone(), o.topology.clone(), Instant::now());
        let listen_addrs: Vec<Addr> =
            [listen.udp.map(Addr::Udp), listen.tcp.map(Addr::Tcp), listen.quic.map(Addr::Quic)]
                .into_iter()
                .flatten()
                .collect();
        let dht = dht::DhtState::new(o.dht.as_ref(), o.identity.clone(), &listen_addrs, o.gateway.is_some());
        let mut node = o.node;
        // Handshake timestamps count on from the wall clock now (a restarted node's inits are
        // newer than those it sent before); the protocol itself reads no clock.
        node.unix_time_ns =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let mut host = Host::new(o.identity, HostConfig { node, session: o.session }, Box::new(rand_core::OsRng));
        let me = host.public_key();
        for (a, b) in o.topology {
            host.graph_mut().add_edge(a, b, LINK_COST);
        }
        let route_mtu = host.node().route_mtu();
        let gateway = match (o.gateway, uplink) {
            (Some(cfg), Some(port)) => {
                Some(vpn::GatewayState { gw: skyroute_proto::vpn::Gateway::new(cfg), port, sessions: BTreeMap::new() })
            }
            _ => None,
        };
        let d = Driver {
            dht,
            pay: pay::PayState::new(o.escrow),
            host,
            me,
            listen,
            udp,
            radios: radios::Radios::new(o.interfaces, in_tx.clone()),
            pool: Pool::new(tcp, quic),
            inbound,
            commands,
            events,
            session_watch: None,
            conns: BTreeMap::new(),
            to_peer: BTreeMap::new(),
            pings: BTreeMap::new(),
            ping_ids: BTreeMap::new(),
            echoes: BTreeMap::new(),
            sends: BTreeMap::new(),
            receiver: transfer::Receiver::new(o.data_dir),
            services: BTreeMap::new(),
            next_id: 1,
            counters: BTreeMap::new(),
            gateway,
            tunnel: None,
            discovery,
        };
        let mut d = d;
        d.rescan(Instant::now());
        Ok((d, listen, me, route_mtu))
    }

    fn count(&mut self, what: &'static str) {
        *self.counters.entry(what).or_default() += 1;
    }

    pub(super) async fn run(mut self) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(2048);
        loop {
            let now = Instant::now();
            self.settle(now);
            self.transmit(now, &mut out).await;
            let timer = self.next_timer().map(tokio::time::Instant::from_std);
            tokio::select! {
                r = recv_udp(self.udp.as_mut(), &mut self.host) => {
                    if r.is_err() {
                        self.count("recv_errors");
                    }
                }
                Some(p) = recv_port(self.gateway.as_mut().map(|g| &mut g.port.rx)) => {
                    // What else waits is taken too (as with datagrams), so the session packs
                    // a batch into full packets and one settle sends them.
                    let now = Instant::now();
                    self.gateway_from_net(now, p);
                    for _ in 0..RECV_BATCH {
                        let Some(Ok(p)) = self.gateway.as_mut().map(|g| g.port.rx.try_recv()) else { break };
                        self.gateway_from_net(now, p);
                    }
                }
                p = recv_port(self.tunnel.as_mut().map(|t| &mut t.port.rx)) => match p {
                    Some(p) => {
                        let now = Instant::now();
                        self.tunnel_from_app(now, p);
                        for _ in 0..RECV_BATCH {
                            let Some(Ok(p)) = self.tunnel.as_mut().map(|t| t.port.rx.try_recv()) else { break };
                            self.tunnel_from_app(now, p);
                        }
                    }
                    // The platform closed its side: the tunnel is down.
                    None => {
                        self.tunnel_down();
                    }
                },
                Some(i) = self.inbound.recv() => {
                    self.on_inbound(i);
                    for _ in 0..RECV_BATCH {
                        let Ok(i) = self.inbound.try_recv() else { break };
                        self.on_inbound(i);
                    }
                }
                _ = sleep_until(timer) => {
                    // What would wake a phone's CPU: an idle node asks for no timer at all.
                    self.count("timer_wakeups");
                    let now = Instant::now();
                    self.host.handle_timeout(now);
                    self.tick_jobs(now);
                    self.discovery_tick(now);
                    self.dht_tick(now);
                    self.pay_tick(now);
                }
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Stop) | None => break,
                    Some(c) => self.on_command(Instant::now(), c),
                },
            }
        }
        self.shutdown(&mut out).await;
        Ok(())
    }

    fn on_inbound(&mut self, i: Inbound) {
        match i {
            Inbound::Packet(from, mut data) => self.host.handle_datagram(Instant::now(), from, &mut data),
            Inbound::Connected(addr, tx) => self.pool.connected(addr, tx),
            Inbound::Closed(addr, why) => {
                tracing::debug!(%addr, why, "connection closed");
                self.pool.closed(&addr);
            }
        }
    }

    /// Sends everything the node has to send.
    async fn transmit(&mut self, now: Instant, out: &mut Vec<u8>) {
        while let Some(dst) = self.host.poll_transmit(now, None, out) {
            match dst {
                Addr::Udp(a) => match &mut self.udp {
                    // A failed send is a lost packet: the protocol recovers, the driver goes on.
                    Some(u) => {
                        if u.push(a, out).await.is_err() {
                            self.count("send_errors");
                        }
                    }
                    None => self.count("no_transport"),
                },
                Addr::TcpOn(..) | Addr::QuicOn(..) => self.send_bound(dst, out),
                Addr::UdpOn(i, a) => match self.radios.bound.get(&i.0) {
                    // Phones' radios are not the fast path: one datagram per call, never waiting.
                    Some(b) => {
                        if b.socket.try_send_to(out, a).is_err() {
                            self.count("send_errors");
                        }
                    }
                    None => self.count("no_transport"),
                },
                other => {
                    if self.pool.send(other, out).is_err() {
                        self.count("send_queue_full");
                    }
                }
            }
        }
        if let Some(u) = &mut self.udp {
            if u.flush().await.is_err() {
                self.count("send_errors");
            }
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        let jobs = self.pings.values().map(|p| p.next_at).chain(self.echoes.values().map(|e| e.deadline)).min();
        [self.host.poll_timeout(), jobs, self.discovery.deadline(), self.dht.deadline(), self.pay.deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Hands the host's events to the services, and lets the services write, until nothing
    /// moves (a service's write raises events of its own).
    fn settle(&mut self, now: Instant) {
        for _ in 0..64 {
            let mut moved = false;
            while let Some(e) = self.host.poll_event() {
                moved = true;
                match e {
                    HostEvent::Node(e) => self.on_node_event(now, e),
                    HostEvent::Session(e) => self.on_session_event(now, e),
                }
            }
            moved |= self.pump(now);
            moved |= self.dht_pump(now);
            if !moved {
                break;
            }
        }
    }

    fn on_node_event(&mut self, now: Instant, e: Event) {
        match &e {
            Event::LinkUp { peer, .. } => {
                tracing::info!(peer = %short(peer), "link up");
                self.discovery_link_changed(now, *peer, true);
                self.dht_link_changed(now, *peer, true);
            }
            Event::LinkDown { peer, reason, .. } => {
                tracing::info!(peer = %short(peer), ?reason, "link down");
                self.discovery_link_changed(now, *peer, false);
                self.dht_link_changed(now, *peer, false);
            }
            _ => {}
        }
        let _ = self.events.send(e);
    }

    fn on_session_event(&mut self, now: Instant, e: SessionEvent) {
        if !matches!(e, SessionEvent::Stream { .. } | SessionEvent::Datagram { .. }) {
            if let Some(w) = &self.session_watch {
                // A full queue already holds a nudge: the watcher reads the newest status.
                let _ = w.try_send(());
            }
        }
        match e {
            SessionEvent::Established { session, peer } => {
                tracing::info!(session, peer = %short(&peer), "session established");
                for p in self.pings.values_mut().filter(|p| p.session == session) {
                    p.established_at.get_or_insert(now);
                    p.next_at = now;
                }
            }
            SessionEvent::Accepted { session, peer } => {
                tracing::info!(session, peer = %short(&peer), "session accepted");
                self.conns.insert(session, Conn::new(peer));
            }
            SessionEvent::Stream { session, offset, data } => self.on_stream(now, session, offset, &data),
            SessionEvent::Datagram { session, data } => {
                // One channel message per datagram.
                let Some(peer) = self.conns.get(&session).map(|c| c.peer) else { return };
                let mut d = skyroute_proto::channel::Deframer::default();
                d.push(&data);
                match d.next_message() {
                    Ok(Some((channel, payload))) => {
                        let payload = payload.to_vec();
                        self.on_message(now, session, peer, channel, &payload);
                    }
                    _ => self.count("bad_datagrams"),
                }
            }
            SessionEvent::PathUp { session, path } => tracing::debug!(session, path, "path up"),
            SessionEvent::PathDown { session, path } => tracing::debug!(session, path, "path down"),
            SessionEvent::PeerRestarted { session, offset } => {
                tracing::info!(session, offset, "peer restarted its session");
            }
            SessionEvent::Failed { session } => self.session_gone(now, session, "no route to the peer"),
            SessionEvent::Closed { session } => self.session_gone(now, session, "the peer closed the session"),
        }
    }

    /// Stream bytes: whole channel messages to their services.
    fn on_stream(&mut self, now: Instant, session: SessionId, offset: u64, data: &[u8]) {
        let Some(conn) = self.conns.get_mut(&session) else { return };
        let peer = conn.peer;
        let mut msgs = Vec::new();
        if let Err(e) = conn.receive(offset, data, |c, p| msgs.push((c, p.to_vec()))) {
            tracing::warn!(session, peer = %short(&peer), "closing a session with a corrupt channel stream: {e}");
            self.count("channel_errors");
            self.host.close(now, session);
            self.session_gone(now, session, "corrupt channel stream");
        }
        for (channel, payload) in msgs {
            self.on_message(now, session, peer, channel, &payload);
        }
    }

    fn on_message(&mut self, now: Instant, session: SessionId, peer: PublicKey, channel: u16, payload: &[u8]) {
        match channel {
            service::CONTROL => match serde_json::from_slice::<Control>(payload) {
                Ok(Control::NoService { channel }) => {
                    tracing::info!(peer = %short(&peer), channel, "peer has no service on the channel");
                    self.count("peer_no_service");
                }
                Err(_) => self.count("bad_control_messages"),
            },
            service::ECHO | service::PING => match serde_json::from_slice::<Exchange>(payload) {
                Ok(Exchange::Request { id, data }) => {
                    let reply = service::encode_json(&Exchange::Reply { id, data });
                    self.send_on(session, channel, &reply);
                }
                Ok(Exchange::Reply { id, data }) if channel == service::ECHO => {
                    if let Some(j) = self.echoes.remove(&id) {
                        let _ = j.reply.send(Ok(data));
                    }
                }
                Ok(Exchange::Reply { id, .. }) => self.on_pong(now, id),
                Err(_) => self.count("bad_service_messages"),
            },
            skyroute_proto::vpn::CHANNEL => self.on_vpn(now, session, peer, payload),
            discovery::CHANNEL => self.on_discovery(now, peer, payload),
            dht::CHANNEL => self.on_dht(now, peer, payload),
            service::TRANSFER => match self.receiver.on_message(session, &peer.to_string(), payload, now) {
                Outcome::None => {}
                Outcome::Reply(m) => self.send_on(session, service::TRANSFER, &m),
                Outcome::Done { id, bytes, sha256, ok, error } => {
                    if let Some(j) = self.sends.remove(&id) {
                        let secs = now.duration_since(j.started).as_secs_f64();
                        let intact = ok && j.out.sha256.as_deref() == Some(sha256.as_str());
                        let _ = j.reply.send(Ok(TransferReport {
                            peer: j.peer.to_string(),
                            name: j.out.name.clone(),
                            bytes,
                            secs,
                            mbit_s: bytes as f64 * 8.0 / secs.max(1e-9) / 1e6,
                            sha256,
                            ok: intact,
                            error,
                        }));
                    }
                }
            },
            c => match self.services.get(&c) {
                Some(tx) => {
                    let m = ServiceMessage {
                        event: "message".into(),
                        peer: peer.to_string(),
                        channel: c,
                        data: hex::encode(payload),
                    };
                    if tx.try_send(m).is_err() {
                        self.count("service_queue_full");
                    }
                }
                None => {
                    self.count("no_service");
                    let m = service::encode_json(&Control::NoService { channel: c });
                    self.send_on(session, service::CONTROL, &m);
                }
            },
        }
    }

    fn on_pong(&mut self, now: Instant, id: u64) {
        let Some(job) = self.ping_ids.remove(&id) else { return };
        if let Some(p) = self.pings.get_mut(&job) {
            if let Some(sent) = p.outstanding.remove(&id) {
                p.rtts.push(now.duration_since(sent).as_secs_f64() * 1e3);
            }
            if p.sent == p.count && p.outstanding.is_empty() {
                self.finish_ping(job);
            }
        }
    }

    fn finish_ping(&mut self, job: u64) {
        let Some(p) = self.pings.remove(&job) else { return };
        self.ping_ids.retain(|_, j| *j != job);
        let n = p.rtts.len();
        let report = PingReport {
            peer: p.peer.to_string(),
            sent: p.sent,
            received: n as u32,
            min_ms: p.rtts.iter().copied().fold(f64::INFINITY, f64::min),
            max_ms: p.rtts.iter().copied().fold(0.0, f64::max),
            avg_ms: p.rtts.iter().sum::<f64>() / n.max(1) as f64,
            setup_ms: p.established_at.map_or(0.0, |t| t.duration_since(p.created).as_secs_f64() * 1e3),
            rtt_ms: p.rtts,
        };
        let _ = p.reply.send(if n == 0 { Err(NodeError::NoReply(p.peer.to_string())) } else { Ok(report) });
    }

    fn tick_jobs(&mut self, now: Instant) {
        let due: Vec<u64> = self.pings.iter().filter(|(_, p)| p.next_at <= now).map(|(id, _)| *id).collect();
        for job in due {
            let Some(p) = self.pings.get_mut(&job) else { continue };
            if p.established_at.is_none() {
                if now.duration_since(p.created) > SETUP_TIMEOUT {
                    let p = self.pings.remove(&job);
                    if let Some(p) = p {
                        let _ = p.reply.send(Err(NodeError::NoSession {
                            peer: p.peer.to_string(),
                            reason: format!("not established within {SETUP_TIMEOUT:?}"),
                        }));
                    }
                } else {
                    p.next_at = now + Duration::from_millis(100);
                }
                continue;
            }
            if p.sent < p.count {
                let id = self.next_id;
                self.next_id += 1;
                p.sent += 1;
                p.outstanding.insert(id, now);
                p.next_at = if p.sent < p.count { now + p.interval } else { now + REPLY_TIMEOUT };
                let session = p.session;
                self.ping_ids.insert(id, job);
                let m = service::encode_json(&Exchange::Request { id, data: Vec::new() });
                self.send_on(session, service::PING, &m);
            } else {
                // The last reply is overdue: report what came back.
                self.finish_ping(job);
            }
        }
        let late: Vec<u64> = self.echoes.iter().filter(|(_, e)| e.deadline <= now).map(|(id, _)| *id).collect();
        for id in late {
            if let Some(e) = self.echoes.remove(&id) {
                let _ = e.reply.send(Err(NodeError::NoReply("the echo service".into())));
            }
        }
    }

    /// A session ended: its requests fail, its incoming transfers are dropped.
    fn session_gone(&mut self, now: Instant, session: SessionId, why: &str) {
        tracing::info!(session, why, "session ended");
        self.to_peer.retain(|_, s| *s != session);
        self.dht.sessions.retain(|_, s| *s != session);
        let conn = self.conns.remove(&session);
        self.vpn_session_gone(now, session);
        let Some(conn) = conn else { return };
        self.receiver.session_gone(session, &conn.peer.to_string(), now);
        let err =
            |what: &'static str| NodeError::SessionEnded { what, peer: conn.peer.to_string(), why: why.to_string() };
        for id in self.sends.iter().filter(|(_, j)| j.session == session).map(|(id, _)| *id).collect::<Vec<_>>() {
            if let Some(j) = self.sends.remove(&id) {
                let _ = j.reply.send(Err(err("transfer")));
            }
        }
        for id in self.pings.iter().filter(|(_, j)| j.session == session).map(|(id, _)| *id).collect::<Vec<_>>() {
            if let Some(j) = self.pings.remove(&id) {
                let _ = j.reply.send(Err(err("ping")));
            }
        }
        for id in self.echoes.iter().filter(|(_, j)| j.session == session).map(|(id, _)| *id).collect::<Vec<_>>() {
            if let Some(j) = self.echoes.remove(&id) {
                let _ = j.reply.send(Err(err("echo")));
            }
        }
    }

    fn send_on(&mut self, session: SessionId, channel: u16, payload: &[u8]) {
        if let Some(c) = self.conns.get_mut(&session) {
            c.send(channel, payload);
        }
    }

    /// Feeds transfers into their sessions' queues and the queues into the streams. Returns
    /// whether any bytes moved.
    fn pump(&mut self, now: Instant) -> bool {
        let mut moved = false;
        let mut failed = Vec::new();
        for (id, j) in self.sends.iter_mut() {
            let Some(c) = self.conns.get_mut(&j.session) else { continue };
            while c.queued() < TRANSFER_AHEAD {
                match j.out.next_message() {
                    Ok(Some(m)) => c.send(service::TRANSFER, &m),
                    Ok(None) => break,
                    Err(e) => {
                        failed.push((*id, e.to_string()));
                        break;
                    }
                }
            }
        }
        for (id, e) in failed {
            if let Some(j) = self.sends.remove(&id) {
                let _ = j.reply.send(Err(NodeError::Source { source_name: j.out.name.clone(), reason: e.to_string() }));
            }
        }
        for (&sid, c) in self.conns.iter_mut() {
            if c.queued() == 0 {
                continue;
            }
            let room = self.host.sessions().stream_room(sid);
            if room == 0 {
                continue;
            }
            let n = c.queued().min(room);
            match self.host.stream_write(now, sid, &c.unsent()[..n]) {
                Ok(taken) if taken > 0 => {
                    c.advance(taken);
                    moved = true;
                }
                _ => {}
            }
        }
        moved
    }

    /// Our session to `peer`, opened if there is none.
    fn session_to(&mut self, now: Instant, peer: PublicKey) -> Result<SessionId, NodeError> {
        self.session_with_routes(now, peer, None)
    }

    /// The session to `peer` (opened with `routes` disjoint routes if there is none yet).
    fn session_with_routes(
        &mut self,
        now: Instant,
        peer: PublicKey,
        routes: Option<usize>,
    ) -> Result<SessionId, NodeError> {
        if let Some(&s) = self.to_peer.get(&peer) {
            return Ok(s);
        }
        let s = self
            .host
            .connect(now, peer, routes)
            .map_err(|e| NodeError::NoSession { peer: peer.to_string(), reason: e.to_string() })?;
        self.to_peer.insert(peer, s);
        self.conns.insert(s, Conn::new(peer));
        Ok(s)
    }

    fn on_command(&mut self, now: Instant, c: Command) {
        match c {
            Command::Connect { peer, addr } => {
                self.dial(now, peer, addr);
            }
            Command::AddTopology { a, b } => self.host.graph_mut().add_edge(a, b, LINK_COST),
            Command::OpenRoute { hops, reply } => {
                let _ = reply.send(self.host.node_mut(now).open_route(now, None, &hops).map_err(NodeError::from));
            }
            Command::SendRoute { route, class, data, reply } => {
                let _ = reply.send(self.host.node_mut(now).send(now, route, class, &data).map_err(NodeError::from));
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Resolve { peer, reply } => {
                let _ = reply.send(self.resolve(&peer));
            }
            Command::Ping { peer, count, interval, reply } => match self.session_to(now, peer) {
                Ok(session) => {
                    let established = self.host.sessions().is_established(session);
                    let job = self.next_id;
                    self.next_id += 1;
                    let p = PingJob {
                        peer,
                        session,
                        count: count.clamp(1, 10_000),
                        sent: 0,
                        interval,
                        next_at: now,
                        created: now,
                        established_at: established.then_some(now),
                        outstanding: BTreeMap::new(),
                        rtts: Vec::new(),
                        reply,
                    };
                    self.pings.insert(job, p);
                    self.tick_jobs(now);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Echo { peer, data, reply } => match self.session_to(now, peer) {
                Ok(session) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    self.echoes.insert(id, EchoJob { session, deadline: now + SETUP_TIMEOUT + REPLY_TIMEOUT, reply });
                    let m = service::encode_json(&Exchange::Request { id, data });
                    self.send_on(session, service::ECHO, &m);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Transfer { peer, source, reply } => {
                let id = self.next_id;
                self.next_id += 1;
                let out = match Outgoing::open(id, &source) {
                    Ok(o) => o,
                    Err(e) => {
                        let _ = reply
                            .send(Err(NodeError::Source { source_name: format!("{source:?}"), reason: e.to_string() }));
                        return;
                    }
                };
                match self.session_to(now, peer) {
                    Ok(session) => {
                        self.send_on(session, service::TRANSFER, &out.begin());
                        self.sends.insert(id, SendJob { peer, session, out, started: now, reply });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Received { reply } => {
                let _ = reply.send(self.receiver.done.clone());
            }
            Command::Message { peer, channel, data, reply } => {
                let r = self.session_to(now, peer).map(|s| self.send_on(s, channel, &data));
                let _ = reply.send(r);
            }
            Command::WatchSessions { to } => self.session_watch = Some(to),
            Command::Register { channel, to, reply } => {
                self.services.retain(|_, tx| !tx.is_closed());
                let r = if channel < service::FIRST_FREE_CHANNEL {
                    Err(NodeError::ReservedChannel(channel))
                } else {
                    match self.services.entry(channel) {
                        std::collections::btree_map::Entry::Occupied(_) => Err(NodeError::ChannelTaken(channel)),
                        std::collections::btree_map::Entry::Vacant(v) => {
                            v.insert(to);
                            Ok(())
                        }
                    }
                };
                let _ = reply.send(r);
            }
            Command::TunnelUp { gateway, routes, port, reply } => self.tunnel_up(now, gateway, routes, port, reply),
            Command::Rescan => self.rescan(now),
            Command::Networks(nets) => self.set_networks(now, nets),
            Command::NetworkChanged => {
                tracing::info!("network changed: probing every link and session path");
                self.host.network_changed(now);
            }
            Command::TunnelDown { reply } => {
                let _ = reply.send(self.tunnel_down());
            }
            Command::Lookup { target, connect, reply } => self.dht_lookup(now, target, connect, reply),
            Command::NearestGateway { reply } => self.nearest_gateway(now, reply),
            Command::Stop => {}
        }
    }

    fn resolve(&self, peer: &str) -> Result<PublicKey, NodeError> {
        if let Ok(k) = PublicKey::from_hex(peer) {
            return Ok(k);
        }
        let addr = skyroute_proto::Address::from_hex(peer).map_err(|_| NodeError::BadPeer(peer.to_string()))?;
        let known = self
            .host
            .graph()
            .nodes()
            .copied()
            .chain(self.host.node().links().into_iter().map(|l| l.peer))
            .chain(self.dht.learned_keys());
        known.into_iter().find(|k| k.address().ct_eq(&addr)).ok_or_else(|| NodeError::UnknownAddress(peer.to_string()))
    }

    fn status(&self) -> Status {
        let reasons = |r: &skyroute_proto::RejectCounts| r.iter().map(|(k, v)| (k.name().to_string(), v)).collect();
        let now = Instant::now();
        let (buffered_bytes, reserved_bytes) = self.host.node().buffered_bytes();
        let (discovered_nodes, known_links) = self.discovery_status();
        let es = self.host.sessions().endpoint_stats();
        let session_rejected = nonzero([
            ("unknown_session", es.unknown_session),
            ("bad_handshake", es.bad_handshake),
            ("replayed_init", es.replayed_init),
            ("malformed", es.malformed),
            ("refused", es.refused),
        ]);
        Status {
            public_key: self.me.to_string(),
            address: self.me.address().to_string(),
            listen: self.listen.list(),
            links: self
                .host
                .node()
                .links()
                .into_iter()
                .map(|l| (l.stats.last_minute.read(now), l))
                .map(|((packets_last_min, rekeys_last_min), l)| LinkStatus {
                    peer: l.peer.to_string(),
                    transport: l.addr.kind().name().into(),
                    interface: self.radios.name(skyroute_proto::Endpoint::interface(&l.addr)),
                    addr: l.addr.socket().to_string(),
                    state: match l.state {
                        skyroute_proto::LinkState::Up => "up",
                        skyroute_proto::LinkState::Connecting => "connecting",
                        skyroute_proto::LinkState::Down => "down",
                    }
                    .into(),
                    rtt_ms: l.stats.rtt.map(|r| r.as_secs_f64() * 1e3),
                    tx_packets: l.stats.tx_packets,
                    rx_packets: l.stats.rx_packets,
                    tx_bytes: l.stats.tx_bytes,
                    rx_bytes: l.stats.rx_bytes,
                    rekeys: l.stats.rekeys,
                    handshakes: l.stats.handshakes,
                    keepalives: l.stats.keepalives,
                    packets_last_min,
                    rekeys_last_min,
                    in_flight: l.in_flight,
                    lost_packets: l.lost,
                    loss: l.lost as f64 / (l.acked + l.lost).max(1) as f64,
                    rejected: reasons(&l.stats.rejected),
                })
                .collect(),
            networks: self.radios.status(),
            routes: self.host.node().route_count(),
            buffered_bytes,
            reserved_bytes,
            rejected: reasons(&self.host.node().stats().rejected),
            sessions: self.host.sessions().ids().into_iter().filter_map(|id| self.session_status(id)).collect(),
            session_rejected,
            gateway: self.gateway_status(),
            tunnel: self.tunnel_status(),
            discovered_nodes,
            known_links,
            dht: self.dht_status(),
            accounting: self.accounting_status(),
            connections: self.pool.len(),
            counters: nonzero(
                self.counters
                    .iter()
                    .map(|(k, v)| (*k, *v))
                    .chain([("transfer_rejected", self.receiver.rejected)])
                    .chain(
                        self.pool
                            .quic
                            .as_ref()
                            .map(|q| ("quic_too_large", q.too_large.load(std::sync::atomic::Ordering::Relaxed))),
                    ),
            ),
        }
    }

    fn session_status(&self, id: SessionId) -> Option<SessionStatus> {
        let s = self.host.sessions().stats(id)?;
        let rejected = nonzero([
            ("auth", s.rejected_auth),
            ("replay", s.rejected_replay),
            ("malformed", s.rejected_malformed),
            ("stale_path", s.rejected_stale_path),
            ("over_limit", s.rejected_over_limit),
            ("unknown", s.rejected_unknown),
        ]);
        let now = Instant::now();
        let (packets_last_min, rekeys_last_min) = self.host.sessions().last_minute(id, now);
        Some(SessionStatus {
            packets_last_min,
            rekeys_last_min,
            idle: self.host.sessions().is_idle(now, id),
            dht: self.dht.sessions.values().any(|s| *s == id),
            id,
            peer: self.host.sessions().peer(id)?.to_string(),
            established: self.host.sessions().is_established(id),
            paths: self
                .host
                .sessions()
                .paths(id)
                .into_iter()
                .map(|(pid, state, rtt, hops)| PathStatus {
                    id: pid,
                    state: format!("{state:?}").to_lowercase(),
                    rtt_ms: rtt.map(|r| r.as_secs_f64() * 1e3),
                    hops: hops.iter().map(short).collect(),
                    interface: self
                        .host
                        .sessions()
                        .path_link(id, pid)
                        .and_then(|l| self.host.node().link(l))
                        .and_then(|l| self.radios.name(skyroute_proto::Endpoint::interface(&l.addr))),
                })
                .collect(),
            stream_bytes_written: s.stream_bytes_written,
            stream_bytes_confirmed: s.stream_bytes_confirmed,
            stream_bytes_received: s.stream_bytes_received,
            repair_sent: s.repair_sent,
            rehandshakes: s.rehandshakes,
            rekeys: s.rekeys,
            path_failures: s.path_failures,
            paths_retired: s.paths_retired,
            rejected,
        })
    }

    /// Closes sessions and links and sends the goodbyes.
    async fn shutdown(&mut self, out: &mut Vec<u8>) {
        let now = Instant::now();
        for id in self.host.sessions().ids() {
            self.host.close(now, id);
        }
        self.transmit(now, out).await;
        for id in self.host.node().link_ids() {
            self.host.node_mut(now).close_link(now, id);
        }
        self.transmit(now, out).await;
        // Let TCP and QUIC connections write the last packets.
        if !self.pool.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(q) = &self.pool.quic {
            q.close();
        }
    }
}

/// Named counters for status: the ones that are not zero.
fn nonzero<'a>(counts: impl IntoIterator<Item = (&'a str, u64)>) -> BTreeMap<String, u64> {
    counts.into_iter().filter(|(_, v)| *v > 0).map(|(k, v)| (k.to_string(), v)).collect()
}

/// The next packet from a port, if there is one.
async fn recv_port(port: Option<&mut mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match port {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Waits for UDP datagrams and feeds them to the node.
async fn recv_udp(udp: Option<&mut Udp>, host: &mut Host<Addr>) -> std::io::Result<()> {
    match udp {
        Some(u) => u.recv(|from, d| host.handle_datagram(Instant::now(), Addr::Udp(from), d)).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The first 16 hex digits of a key, for logs and status.
pub(crate) fn short(k: &PublicKey) -> String {
    k.to_string()[..16].to_string()
}
