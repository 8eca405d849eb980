//! One end-to-end session: keys, paths, the coded stream in both directions, datagrams.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::forward::Class;
use crate::identity::PublicKey;
use crate::link::LinkId;
use crate::node::Node;
use crate::noise::Initiator;
use crate::route::{RouteError, RouteId};

use super::fec::{BlockDecoder, BlockEncoder, MAX_K};
use super::keys::{OpenError, SessionKeys};
use super::path::{Path, PathState, REALTIME_SEQ};
use super::wire::{self, Ack, BlockAck, Frame, PathReport, DECODED, MAX_ACK_ENTRIES};
use super::{SessionConfig, SessionEvent, SessionId, SessionStats, Strategy};

/// Packets a path must have delivered before its smallest delay counts as its base.
const MEASURED_SAMPLES: u32 = 4;

pub(crate) enum Handshake {
    /// Initiator waiting for the response; the init is resent on every new path.
    Waiting {
        state: Box<Initiator>,
        packet: Vec<u8>,
        /// The last time the init went out, and the first.
        sent: Instant,
        since: Instant,
    },
    Done,
}

struct OutBlock {
    offset: u64,
    enc: BlockEncoder,
    /// Symbols to send next, in order.
    queue: VecDeque<u32>,
    next_repair: u32,
    /// Symbols in flight (sent on a live path and not yet reported passed), by ESI, with copies.
    inflight: BTreeMap<u32, u8>,
    /// What the receiver last reported.
    received: u16,
    source_bits: u64,
    decoded: bool,
}

struct InBlock {
    offset: u64,
    dec: BlockDecoder,
    data: Option<Vec<u8>>,
}

pub(crate) struct Ctx<'a, A> {
    pub now: Instant,
    pub node: &'a mut Node<A>,
    pub cfg: &'a SessionConfig,
    pub events: &'a mut VecDeque<SessionEvent>,
    pub by_route: &'a mut BTreeMap<RouteId, (SessionId, u32)>,
}

pub(crate) struct Session {
    /// The origin of the session's clock: packets are stamped with the microseconds since.
    clock: Instant,
    /// Everything the peer seals under the current keys left it after this instant of ours
    /// (our init went out, or our response did): a bound on any such packet's delay.
    keyed_after: Option<Instant>,
    pub id: SessionId,
    pub peer: PublicKey,
    pub initiator: bool,
    pub handshake: Handshake,
    pub keys: Option<SessionKeys>,
    /// Responder: the init we answered and our answer (duplicates get the same answer).
    pub answered: Option<(Vec<u8>, Vec<u8>)>,
    /// Responder: the newest init timestamp taken from the peer; an older or equal one is a
    /// replay and changes nothing (it would re-key the session to keys the peer no longer has).
    pub init_ts: Option<crate::noise::Timestamp>,
    /// Responder: the neighbour the session's first route came through (whose share of
    /// sessions it uses).
    pub neighbour: Option<crate::identity::PublicKey>,
    pub paths: BTreeMap<u32, Path>,
    pub next_path: u32,
    /// Path ids the peer retired (packets on them are stale).
    closed_paths: BTreeSet<u32>,
    // Send side of the stream.
    pending: VecDeque<u8>,
    out: BTreeMap<u32, OutBlock>,
    next_block: u32,
    next_offset: u64,
    // Receive side.
    inb: BTreeMap<u32, InBlock>,
    recv_next: u32,
    recv_offset: u64,
    recv_fresh: bool,
    // Acks.
    ack_seq: u32,
    peer_ack_seq: Option<u32>,
    ack_due: Option<Instant>,
    ack_path: Option<u32>,
    unacked_eliciting: u32,
    // Datagrams.
    dgram_next: u32,
    dgram_seen: BTreeSet<u32>,
    /// Our RESUME is sent with every packet until the peer acknowledges anything after a
    /// handshake; the peer's RESUME is applied once per handshake.
    resume_out: bool,
    resume_in: bool,
    pub last_recv: Instant,
    pub no_path_since: Option<Instant>,
    /// This side's session state is new (a responder that had never seen the session).
    pub fresh: bool,
    pub next_find: Instant,
    /// A path moving to a radio no path used (`.0` retires once `.1` is live).
    pub rebalance: Option<(u32, u32)>,
    pub stats: SessionStats,
    pub failed: bool,
    /// Handshakes completed (the first, then re-handshakes).
    handshakes: u32,
    /// First links of paths that went suspect, and when: a neighbour that just went out of
    /// range still looks up until its link times out, so it is not offered for new routes
    /// for a while.
    pub failed_first_links: BTreeMap<LinkId, Instant>,
    /// Disjoint routes this session keeps, if not the configured number.
    pub routes: Option<usize>,
    /// Last time the application wrote or sent, or the peer's data arrived: the session is
    /// active (probes its paths, ticks) until `idle_after` past it.
    last_activity: Instant,
    /// Woken from idle (or the network changed) at this time: bulk goes over every live path
    /// until each has answered since.
    waking: Option<Instant>,
    /// Packets sent and rekeys over the last minute (for status: an idle session is quiet).
    pub recent: crate::stats::LastMinute,
}

/// Application bytes in a full block.
fn block_bytes(cfg: &SessionConfig, t: usize) -> usize {
    cfg.block_symbols.clamp(1, MAX_K) * t
}

impl Session {
    pub fn new(id: SessionId, peer: PublicKey, initiator: bool, handshake: Handshake, now: Instant) -> Self {
        Session {
            clock: now,
            keyed_after: None,
            id,
            peer,
            initiator,
            handshake,
            keys: None,
            answered: None,
            init_ts: None,
            neighbour: None,
            paths: BTreeMap::new(),
            routes: None,
            next_path: 1,
            closed_paths: BTreeSet::new(),
            pending: VecDeque::new(),
            out: BTreeMap::new(),
            next_block: 0,
            next_offset: 0,
            inb: BTreeMap::new(),
            recv_next: 0,
            recv_offset: 0,
            recv_fresh: true,
            ack_seq: 0,
            peer_ack_seq: None,
            ack_due: None,
            ack_path: None,
            unacked_eliciting: 0,
            dgram_next: 0,
            dgram_seen: BTreeSet::new(),
            resume_out: false,
            resume_in: false,
            last_recv: now,
            no_path_since: Some(now),
            fresh: !initiator,
            next_find: now,
            rebalance: None,
            stats: SessionStats::default(),
            failed: false,
            handshakes: 0,
            failed_first_links: BTreeMap::new(),
            last_activity: now,
            waking: None,
            recent: Default::default(),
        }
    }

    /// Whether the session has work: handshake or paths being built, stream bytes unsent or
    /// unconfirmed, an ack due, or traffic within `idle_after`.
    pub fn active(&self, now: Instant, cfg: &SessionConfig) -> bool {
        !self.established()
            || !self.pending.is_empty()
            || !self.out.is_empty()
            || self.ack_due.is_some()
            || self.paths.values().any(|p| p.state == PathState::Building)
            || now.saturating_duration_since(self.last_activity) < cfg.idle_after
    }

    /// Whether packets sent wait for the peer's report (the timer runs until they are settled
    /// or their path is declared suspect).
    pub fn awaiting(&self) -> bool {
        self.paths.values().any(|p| p.awaiting())
    }

    /// Before the application sends: a session coming back from idle learns at once which of
    /// its paths still work (a probe on each) and sends its first blocks over all of them.
    pub fn wake<A: crate::link::Endpoint>(&mut self, ctx: &mut Ctx<'_, A>) {
        let was_idle = !self.active(ctx.now, ctx.cfg);
        self.last_activity = ctx.now;
        if !was_idle || !self.established() {
            return;
        }
        // The peer had nothing to say while we were quiet: its silence so far is no sign of
        // trouble (the re-handshake clock starts now).
        self.last_recv = self.last_recv.max(ctx.now);
        self.probe_all(ctx);
    }

    /// Probes every path that is not being built, and spreads bulk over all live paths until
    /// each has answered.
    pub fn probe_all<A: crate::link::Endpoint>(&mut self, ctx: &mut Ctx<'_, A>) {
        if !self.established() {
            return;
        }
        self.waking = Some(ctx.now);
        let ids: Vec<u32> = self.paths.values().filter(|p| p.state != PathState::Building).map(|p| p.id).collect();
        for id in ids {
            let _ = self.send_on(ctx, id, Class::Realtime, &[Frame::Probe], None);
        }
    }

    /// Ends the waking spread once every live path answered after it began.
    fn check_awake(&mut self) {
        let Some(since) = self.waking else { return };
        if self.paths.values().filter(|p| p.usable()).all(|p| p.confirmed_at.is_some_and(|t| t >= since)) {
            self.waking = None;
        }
    }

    pub fn established(&self) -> bool {
        matches!(self.handshake, Handshake::Done) && self.keys.is_some()
    }

    /// Keys were (re)installed: both sides announce where their streams stand. Keys that
    /// replace others (a new handshake) make what is in flight under the old ones lost: the
    /// peer refuses it, and would never report it passed.
    pub fn on_keys(&mut self, cfg: &SessionConfig, keys: SessionKeys, now: Instant, keyed_after: Instant) {
        self.keyed_after = Some(keyed_after);
        if self.keys.is_some() {
            let ids: Vec<u32> = self.paths.keys().copied().collect();
            for id in ids {
                self.path_failed(cfg, id);
            }
        }
        self.handshakes += 1;
        self.keys = Some(keys);
        self.handshake = Handshake::Done;
        self.resume_out = true;
        self.resume_in = true;
        self.peer_ack_seq = None;
        self.last_recv = now;
    }

    pub fn live_paths(&self) -> usize {
        self.paths.values().filter(|p| p.usable()).count()
    }

    /// Bytes the application may still write to the stream.
    pub fn stream_room(&self, cfg: &SessionConfig) -> usize {
        let held: usize = self.pending.len() + self.out.values().map(|b| b.enc.len()).sum::<usize>();
        cfg.send_buffer.saturating_sub(held)
    }

    pub fn stream_write(&mut self, cfg: &SessionConfig, data: &[u8]) -> usize {
        let n = data.len().min(self.stream_room(cfg));
        self.pending.extend(&data[..n]);
        self.stats.stream_bytes_written += n as u64;
        n
    }

    /// Stream bytes written and not yet confirmed decoded by the peer.
    pub fn unconfirmed(&self) -> usize {
        self.pending.len() + self.out.values().map(|b| b.enc.len()).sum::<usize>()
    }

    /// The largest symbol whose packet (with a RESUME frame, padded to 16) fits the route MTU.
    fn symbol_size<A: crate::link::Endpoint>(ctx: &Ctx<'_, A>) -> usize {
        let sealed = ctx.node.route_mtu().saturating_sub(crate::wire::DATA_HEADER_LEN + crate::crypto::TAG_LEN);
        let body = sealed - sealed % 16;
        let room = body.saturating_sub(wire::BODY_HEADER_LEN + wire::RESUME_LEN + wire::SYMBOL_OVERHEAD);
        // The body pads to 16 bytes, so it is the packet that is sized to a multiple of 16,
        // not the symbol: a symbol packet carries no padding.
        let fixed = wire::BODY_HEADER_LEN + wire::SYMBOL_OVERHEAD;
        (((fixed + ctx.cfg.symbol_size.min(room)) & !15).saturating_sub(fixed)).max(16)
    }

    // ---- sending packets -------------------------------------------------------------------

    /// Seals `frames` into one packet on `path` in `class`. Returns false if the route refused.
    fn send_on<A: crate::link::Endpoint>(
        &mut self,
        ctx: &mut Ctx<'_, A>,
        path: u32,
        class: Class,
        frames: &[Frame<'_>],
        symbol: Option<(u32, u32)>,
    ) -> Result<(), RouteError> {
        let Some(keys) = self.keys.as_mut() else { return Err(RouteError::NotReady) };
        let Some(p) = self.paths.get_mut(&path) else { return Err(RouteError::UnknownRoute) };
        let seq = p.peek_seq(class);
        let mut body = Vec::with_capacity(1500);
        let stamp = (ctx.now.saturating_duration_since(self.clock).as_micros() as u64) as u32;
        wire::encode_header(path, seq, stamp, &mut body);
        let resume = self.resume_out.then(|| Frame::Resume {
            next_block: self.out.keys().next().copied().unwrap_or(self.next_block),
            offset: self.out.values().next().map(|b| b.offset).unwrap_or(self.next_offset),
            recv_next: self.recv_next,
            fresh: self.fresh,
        });
        if let Some(r) = &resume {
            r.encode(&mut body);
        }
        for f in frames {
            f.encode(&mut body);
        }
        wire::pad(&mut body);
        let eliciting = frames.iter().any(|f| f.eliciting()) || resume.is_some();
        let mut pkt = Vec::with_capacity(body.len() + 40);
        if keys.seal(ctx.now, ctx.cfg.rekey_after, ctx.cfg.rekey_packets, &body, &mut pkt) {
            self.stats.rekeys += 1;
            self.recent.rekey(ctx.now);
        }
        ctx.node.send(ctx.now, p.route, class, &pkt).inspect_err(|e| {
            if *e == RouteError::QueueFull {
                p.blocked = true;
            }
        })?;
        p.record(ctx.now, class, pkt.len(), symbol, eliciting);
        self.recent.packet(ctx.now);
        self.stats.route_bytes_sent += pkt.len() as u64;
        self.stats.packets_sent += 1;
        Ok(())
    }

    /// Sends the handshake init on `path` (initiator, before the response).
    pub fn send_init<A: crate::link::Endpoint>(&mut self, ctx: &mut Ctx<'_, A>, path: u32) {
        let Handshake::Waiting { packet, .. } = &self.handshake else { return };
        let Some(p) = self.paths.get(&path) else { return };
        if ctx.node.send(ctx.now, p.route, Class::Realtime, packet).is_ok() {
            self.stats.route_bytes_sent += packet.len() as u64;
        }
    }

    /// Sends the handshake init on every path that is not being built.
    pub fn send_init_all<A: crate::link::Endpoint>(&mut self, ctx: &mut Ctx<'_, A>) {
        let ids: Vec<u32> = self.paths.values().filter(|p| p.state != PathState::Building).map(|p| p.id).collect();
        for id in ids {
            self.send_init(ctx, id);
        }
    }

    fn send_ack<A: crate::link::Endpoint>(&mut self, ctx: &mut Ctx<'_, A>) {
        // Whatever happens, this ack is no longer due: with no path to send it on, the next
        // packet that arrives asks again.
        self.ack_due = None;
        let path = self
            .ack_path
            .filter(|p| self.paths.get(p).is_some_and(|p| p.usable()))
            .or_else(|| self.best_paths(1).first().copied());
        let Some(path) = path else { return };
        self.ack_seq = self.ack_seq.wrapping_add(1);
        let mut blocks = Vec::new();
        for (&block, b) in self.inb.iter().take(ctx.cfg.ack_blocks.clamp(1, MAX_ACK_ENTRIES)) {
            let received = if b.data.is_some() { DECODED } else { b.dec.received };
            blocks.push(BlockAck { block, received, source_bits: b.dec.source_bits });
        }
        let mut paths = Vec::new();
        for p in self.paths.values() {
            for last in p.recv_last.iter().flatten() {
                let i = (last & REALTIME_SEQ != 0) as usize;
                let min_delay = p.delay_min.get().unwrap_or_default();
                paths.push(PathReport { path: p.id, last_seq: *last, count: p.recv_count[i], min_delay });
            }
        }
        paths.truncate(MAX_ACK_ENTRIES);
        let ack = Frame::Ack(Ack { ack_seq: self.ack_seq, next_block: self.recv_next, blocks, paths });
        if self.send_on(ctx, path, Class::Realtime, &[ack], None).is_ok() {
            self.ack_due = None;
            self.unacked_eliciting = 0;
            self.stats.acks_sent += 1;
        }
    }

    /// Live paths, best (lowest RTT) first.
    fn best_paths(&self, n: usize) -> Vec<u32> {
        let mut v: Vec<&Path> = self.paths.values().filter(|p| p.usable()).collect();
        v.sort_by_key(|p| (p.srtt().unwrap_or(Duration::from_secs(1)), p.id));
        v.into_iter().take(n).map(|p| p.id).collect()
    }

    /// Where a realtime copy goes: the best `realtime_copies` paths that look well; when fewer
    /// look well, every live or suspect path too (a frame must not wait for a path to be
    /// declared dead).
    fn realtime_paths<A>(&self, ctx: &Ctx<'_, A>) -> Vec<u32> {
        let floor = ctx.cfg.dead_floor;
        let mut good: Vec<&Path> = self.paths.values().filter(|p| p.usable() && !p.doubtful(ctx.now, floor)).collect();
        good.sort_by_key(|p| (p.srtt().unwrap_or(Duration::from_secs(1)), p.id));
        let want = ctx.cfg.realtime_copies.max(1);
        let mut out: Vec<u32> = good.iter().take(want).map(|p| p.id).collect();
        if out.len() < want {
            let more: Vec<u32> = self
                .paths
                .values()
                .filter(|p| p.state != PathState::Building && !out.contains(&p.id))
                .map(|p| p.id)
                .collect();
            out.extend(more);
        }
        out
    }

    pub fn send_datagram<A: crate::link::Endpoint>(
        &mut self,
        ctx: &mut Ctx<'_, A>,
        data: &[u8],
        budget: Duration,
    ) -> bool {
        let targets = match ctx.cfg.strategy {
            Strategy::Fountain => self.realtime_paths(ctx),
            Strategy::SingleRoute | Strategy::MinRtt | Strategy::MptcpLike => self.best_paths(1),
            Strategy::DuplicateAll => self.best_paths(usize::MAX),
        };
        let id = self.dgram_next;
        self.dgram_next = self.dgram_next.wrapping_add(1);
        self.stats.datagrams_sent += 1;
        let budget_ms = budget.as_millis().min(u16::MAX as u128) as u16;
        let mut sent = false;
        // A path measured slower than the budget would only carry a copy the peer must drop.
        // One not measured yet still gets its copy (the receiver judges it by a bound): copies
        // on fresh paths are what save frames when the old paths die.
        let in_time = |p: &u32| self.paths.get(p).and_then(|p| p.base_delay()).is_none_or(|d| d <= budget);
        let targets: Vec<u32> = targets.into_iter().filter(in_time).collect();
        for path in targets {
            let f = Frame::Datagram { id, budget_ms, data };
            sent |= self.send_on(ctx, path, Class::Realtime, &[f], None).is_ok();
        }
        if !sent {
            self.stats.datagrams_unsent += 1;
        }
        sent
    }

    // ---- the coded stream ------------------------------------------------------------------

    /// Repair symbols to add to a new block of `k` source symbols, from the loss measured on
    /// the live paths: near zero on clean paths, more when paths lose data or are few.
    fn planned_repair(&self, cfg: &SessionConfig, k: usize) -> usize {
        if cfg.strategy != Strategy::Fountain {
            return 0;
        }
        let live: Vec<&Path> = self.paths.values().filter(|p| p.usable()).collect();
        if live.is_empty() {
            return 0;
        }
        let loss = live.iter().map(|p| p.loss()).fold(0.0, f64::max);
        let few = if live.len() < 2 { cfg.single_path_margin } else { 0.0 };
        ((k as f64) * (1.5 * loss + few)).ceil() as usize
    }

    fn cut_block<A: crate::link::Endpoint>(&mut self, ctx: &Ctx<'_, A>, t: usize) -> bool {
        if self.pending.is_empty() || self.out.len() >= ctx.cfg.max_blocks_in_flight {
            return false;
        }
        let n = self.pending.len().min(block_bytes(ctx.cfg, t));
        let (a, b) = self.pending.as_slices();
        let mut data = Vec::with_capacity(n);
        data.extend_from_slice(&a[..n.min(a.len())]);
        data.extend_from_slice(&b[..n - n.min(a.len())]);
        self.pending.drain(..n);
        let Ok(enc) = BlockEncoder::new(&data, t) else { return false };
        let k = enc.k();
        let extra = self.planned_repair(ctx.cfg, k);
        let mut queue: VecDeque<u32> = (0..k as u32).collect();
        queue.extend(k as u32..(k + extra) as u32);
        self.stats.repair_planned += extra as u64;
        self.out.insert(
            self.next_block,
            OutBlock {
                offset: self.next_offset,
                enc,
                queue,
                next_repair: (k + extra) as u32,
                inflight: BTreeMap::new(),
                received: 0,
                source_bits: 0,
                decoded: false,
            },
        );
        self.next_block = self.next_block.wrapping_add(1);
        self.next_offset += n as u64;
        true
    }

    /// Chooses the paths for the next bulk symbol, by strategy; empty if none has room.
    fn bulk_targets(&self, cfg: &SessionConfig, sym: usize) -> Vec<u32> {
        // Metered routes carry bulk only when no unmetered one is live (if so configured).
        let skip_metered = !cfg.bulk_on_metered && self.paths.values().any(|p| p.usable() && !p.metered);
        let room = |p: &&Path| {
            p.usable() && !p.blocked && p.inflight_bulk + sym <= cfg.path_window && !(skip_metered && p.metered)
        };
        if self.waking.is_some() && cfg.strategy == Strategy::Fountain {
            // Back from idle: which paths survived is not known yet, so every symbol goes on
            // every live path with room until each has answered (one round trip of copies).
            return self.paths.values().filter(room).map(|p| p.id).collect();
        }
        match cfg.strategy {
            Strategy::Fountain | Strategy::SingleRoute => self
                .paths
                .values()
                .filter(room)
                .min_by_key(|p| (p.score(), p.id))
                .map(|p| vec![p.id])
                .unwrap_or_default(),
            Strategy::MinRtt => {
                let best = self.best_paths(1);
                best.into_iter().filter(|id| self.paths.get(id).is_some_and(|p| room(&p))).collect()
            }
            Strategy::MptcpLike => self
                .paths
                .values()
                .filter(room)
                .filter(|p| p.inflight_bulk + sym <= p.cc.cwnd)
                .min_by_key(|p| (p.bulk_rtt.srtt.or(p.srtt()).unwrap_or(Duration::from_secs(1)), p.id))
                .map(|p| vec![p.id])
                .unwrap_or_default(),
            Strategy::DuplicateAll => {
                let mut live = self.best_paths(usize::MAX);
                live.retain(|id| !(skip_metered && self.paths.get(id).is_some_and(|p| p.metered)));
                if live.iter().all(|id| self.paths.get(id).is_some_and(|p| room(&p))) {
                    live
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// Sends stream symbols while some path has room.
    pub fn pump<A: crate::link::Endpoint>(&mut self, ctx: &mut Ctx<'_, A>) {
        if !self.established() {
            return;
        }
        let t = Self::symbol_size(ctx);
        for _ in 0..4096 {
            let targets = self.bulk_targets(ctx.cfg, t + 64);
            if targets.is_empty() {
                return;
            }
            let next = self.out.iter().find(|(_, b)| !b.decoded && !b.queue.is_empty()).map(|(id, _)| *id);
            let block = match next {
                Some(b) => b,
                None => {
                    if !self.cut_block(ctx, t) {
                        return;
                    }
                    continue;
                }
            };
            let b = self.out.get_mut(&block).expect("block exists");
            let Some(esi) = b.queue.pop_front() else { continue };
            let data = b.enc.symbol(esi);
            let (offset, block_len, k) = (b.offset, b.enc.len() as u32, b.enc.k() as u32);
            let mut any = false;
            for path in targets {
                let f = Frame::Symbol { block, offset, block_len, esi, data: &data };
                if self.send_on(ctx, path, Class::Bulk, &[f], Some((block, esi))).is_ok() {
                    any = true;
                    *self.out.get_mut(&block).expect("block exists").inflight.entry(esi).or_default() += 1;
                    self.stats.symbols_sent += 1;
                    if esi >= k {
                        self.stats.repair_sent += 1;
                    }
                }
            }
            if !any {
                // Put it back; the route will say when it has room.
                self.out.get_mut(&block).expect("block exists").queue.push_front(esi);
                return;
            }
        }
    }

    /// After new reports or losses: queue what each unfinished block still needs. Fountain:
    /// fresh repair symbols for the shortfall. Other strategies: resend the missing source
    /// symbols.
    fn top_up(&mut self, cfg: &SessionConfig) {
        self.top_up_below(cfg, None)
    }

    /// [`Self::top_up`] for blocks up to `limit` (those the peer's last report covered).
    fn top_up_below(&mut self, cfg: &SessionConfig, limit: Option<u32>) {
        for (&id, b) in self.out.iter_mut() {
            if limit.is_some_and(|l| id.wrapping_sub(l) as i32 > 0) {
                break;
            }
            if b.decoded {
                b.queue.clear();
                continue;
            }
            let k = b.enc.k() as u32;
            match cfg.strategy {
                Strategy::Fountain => {
                    let received = b.received as u32;
                    let target = if received >= k { received + 1 } else { k };
                    let have = received + b.inflight.len() as u32 + b.queue.len() as u32;
                    for _ in have..target {
                        b.queue.push_back(b.next_repair);
                        b.next_repair += 1;
                        self.stats.repair_reactive += 1;
                    }
                }
                _ => {
                    let queued: BTreeSet<u32> = b.queue.iter().copied().collect();
                    let all_source = b.source_bits.count_ones() >= k;
                    for esi in 0..k {
                        if b.source_bits & (1 << esi) == 0 && !b.inflight.contains_key(&esi) && !queued.contains(&esi) {
                            b.queue.push_back(esi);
                            self.stats.source_resent += 1;
                        }
                    }
                    if all_source {
                        b.queue.clear();
                    }
                }
            }
        }
    }

    fn symbol_passed(&mut self, block: u32, esi: u32) {
        if let Some(b) = self.out.get_mut(&block) {
            if let Some(c) = b.inflight.get_mut(&esi) {
                *c -= 1;
                if *c == 0 {
                    b.inflight.remove(&esi);
                }
            }
        }
    }

    /// A path stopped working: what was in flight on it is lost; queue what the blocks lack.
    fn path_failed(&mut self, cfg: &SessionConfig, path: u32) {
        let lost = match self.paths.get_mut(&path) {
            Some(p) => p.drain_lost(),
            None => return,
        };
        for (b, e) in lost {
            self.symbol_passed(b, e);
        }
        self.top_up(cfg);
    }

    fn apply_ack<A: crate::link::Endpoint>(&mut self, ctx: &mut Ctx<'_, A>, ack: &Ack) {
        if self.peer_ack_seq.is_some_and(|s| ack.ack_seq.wrapping_sub(s) as i32 <= 0) {
            return;
        }
        self.peer_ack_seq = Some(ack.ack_seq);
        self.resume_out = false;
        for r in &ack.paths {
            let mut passed = Vec::new();
            if let Some(p) = self.paths.get_mut(&r.path) {
                p.settle(ctx.now, r.last_seq, |b, e| passed.push((b, e)));
                p.peer_delay_min = Some(r.min_delay);
            }
            for (b, e) in passed {
                self.symbol_passed(b, e);
            }
        }
        self.check_awake();
        self.confirm_below(ack.next_block);
        for e in &ack.blocks {
            if let Some(b) = self.out.get_mut(&e.block) {
                if e.received == DECODED {
                    b.decoded = true;
                } else {
                    b.received = e.received;
                    b.source_bits = e.source_bits;
                }
            }
        }
        // A full report lists only the first blocks: later ones are unknown, not empty.
        let limit = (ack.blocks.len() >= ctx.cfg.ack_blocks.clamp(1, MAX_ACK_ENTRIES))
            .then(|| ack.blocks.last().map(|b| b.block))
            .flatten();
        self.top_up_below(ctx.cfg, limit);
    }

    fn confirm_below(&mut self, next_block: u32) {
        while let Some((&id, _)) = self.out.first_key_value() {
            if next_block.wrapping_sub(id) as i32 > 0 {
                let b = self.out.remove(&id).expect("first exists");
                self.stats.stream_bytes_confirmed += b.enc.len() as u64;
                self.stats.blocks_confirmed += 1;
            } else {
                break;
            }
        }
    }

    // ---- receiving ---------------------------------------------------------------------------

    /// Handles an authenticated-to-be data packet that arrived on `route`.
    pub fn on_data<A: crate::link::Endpoint>(
        &mut self,
        ctx: &mut Ctx<'_, A>,
        route: RouteId,
        epoch: u8,
        counter: u64,
        packet: &mut [u8],
    ) {
        let Some(keys) = self.keys.as_mut() else {
            self.stats.rejected_unknown += 1;
            return;
        };
        let body = match keys.open(epoch, counter, packet) {
            Ok(b) => b,
            Err(OpenError::Replay) => {
                self.stats.rejected_replay += 1;
                return;
            }
            Err(_) => {
                self.stats.rejected_auth += 1;
                return;
            }
        };
        let body = match wire::parse_body(body) {
            Ok(b) => b,
            Err(_) => {
                self.stats.rejected_malformed += 1;
                return;
            }
        };
        // Which path is this? Paths are numbered by the initiator; a path id is bound to the
        // route it first arrived on.
        match self.paths.get(&body.path) {
            Some(p) if p.route != route => {
                self.stats.rejected_stale_path += 1;
                return;
            }
            Some(_) => {}
            None => {
                if self.initiator || self.closed_paths.contains(&body.path) {
                    self.stats.rejected_stale_path += 1;
                    return;
                }
                let p = Path::new(body.path, route, Vec::new(), PathState::Live, ctx.now);
                self.paths.insert(body.path, p);
                ctx.by_route.insert(route, (self.id, body.path));
                ctx.events.push_back(SessionEvent::PathUp { session: self.id, path: body.path });
            }
        }
        if let Some(k) = self.keys.as_mut() {
            k.accept(counter);
        }
        self.last_recv = ctx.now;
        self.stats.packets_received += 1;
        let Some(p) = self.paths.get_mut(&body.path) else { return };
        p.received(body.path_seq);
        let delta =
            (ctx.now.saturating_duration_since(self.clock).as_micros() as u64 as u32).wrapping_sub(body.sent_us);
        p.delay_min.sample(ctx.now, delta);
        let mut eliciting = false;
        let mut urgent = false;
        for f in &body.frames {
            eliciting |= f.eliciting();
            match f {
                Frame::Symbol { block, offset, block_len, esi, data } => {
                    self.last_activity = ctx.now;
                    urgent |= self.on_symbol(ctx, *block, *offset, *block_len, *esi, data);
                }
                Frame::Datagram { id, budget_ms, data } => {
                    self.last_activity = ctx.now;
                    // Acked after `ack_delay`, so the copies from several paths share one ack.
                    self.on_datagram(ctx, body.path, delta, *id, *budget_ms, data);
                }
                Frame::Ack(a) => self.apply_ack(ctx, a),
                Frame::Probe => urgent = true,
                Frame::Resume { next_block, offset, recv_next, fresh } => {
                    urgent = true;
                    self.on_resume(ctx, *next_block, *offset, *recv_next, *fresh);
                }
                Frame::Close => {
                    self.failed = true;
                    ctx.events.push_back(SessionEvent::Closed { session: self.id });
                    return;
                }
                Frame::PathClose { path } => {
                    // What we had in flight on it will not arrive: release it for repair.
                    self.closed_paths.insert(*path);
                    if self.closed_paths.len() > 1024 {
                        // Path ids only grow: the oldest closed ones cannot come back.
                        self.closed_paths.pop_first();
                    }
                    self.path_failed(ctx.cfg, *path);
                    if let Some(p) = self.paths.remove(path) {
                        ctx.by_route.remove(&p.route);
                    }
                }
            }
        }
        if eliciting {
            self.unacked_eliciting += 1;
            self.ack_path = Some(body.path);
            if urgent || self.unacked_eliciting >= ctx.cfg.ack_every {
                self.send_ack(ctx);
            } else if self.ack_due.is_none() {
                self.ack_due = Some(ctx.now + ctx.cfg.ack_delay);
            }
        }
        self.pump(ctx);
    }

    /// The peer's RESUME: applied once after each of our handshakes (it repeats until acked).
    fn on_resume<A>(&mut self, ctx: &mut Ctx<'_, A>, next_block: u32, offset: u64, recv_next: u32, fresh: bool) {
        self.confirm_below(recv_next);
        if !self.resume_in {
            return;
        }
        self.resume_in = false;
        if fresh && self.handshakes > 1 {
            // The peer's state is new: it holds none of our unconfirmed blocks (send them again
            // from scratch) and its own stream starts where it says.
            for b in self.out.values_mut() {
                b.received = 0;
                b.source_bits = 0;
                b.decoded = false;
                b.inflight.clear();
                b.queue.clear();
            }
            for p in self.paths.values_mut() {
                p.forget();
            }
            self.top_up(ctx.cfg);
            if !self.recv_fresh || !self.inb.is_empty() {
                ctx.events.push_back(SessionEvent::PeerRestarted { session: self.id, offset });
            }
            self.inb.clear();
            self.recv_next = next_block;
            self.recv_offset = offset;
        } else if self.recv_fresh && self.inb.is_empty() {
            self.recv_next = next_block;
            self.recv_offset = offset;
        }
        self.recv_fresh = false;
    }

    /// Returns whether an ACK should go out now (a block decoded).
    fn on_symbol<A: crate::link::Endpoint>(
        &mut self,
        ctx: &mut Ctx<'_, A>,
        block: u32,
        offset: u64,
        block_len: u32,
        esi: u32,
        data: &[u8],
    ) -> bool {
        self.recv_fresh = false;
        let ahead = block.wrapping_sub(self.recv_next);
        if ahead as i32 >= 0 && ahead >= ctx.cfg.max_blocks_in_flight as u32 * 2 {
            self.stats.rejected_over_limit += 1;
            return false;
        }
        if (ahead as i32) < 0 {
            self.stats.stale_symbols += 1;
            return false;
        }
        let t = data.len();
        let entry = match self.inb.entry(block) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => match BlockDecoder::new(block_len, t) {
                Ok(dec) => v.insert(InBlock { offset, dec, data: None }),
                Err(_) => {
                    self.stats.rejected_malformed += 1;
                    return false;
                }
            },
        };
        if entry.data.is_some() {
            self.stats.stale_symbols += 1;
            return false;
        }
        if entry.offset != offset || entry.dec.len() != block_len as usize {
            self.stats.rejected_malformed += 1;
            return false;
        }
        self.stats.symbols_received += 1;
        match entry.dec.push(esi, data) {
            Ok(Some(v)) => {
                entry.data = Some(v);
                self.stats.blocks_decoded += 1;
                self.deliver(ctx);
                true
            }
            Ok(None) => false,
            Err(_) => {
                self.stats.rejected_malformed += 1;
                false
            }
        }
    }

    fn deliver<A>(&mut self, ctx: &mut Ctx<'_, A>) {
        while let Some(b) = self.inb.get(&self.recv_next) {
            if b.data.is_none() {
                break;
            }
            let b = self.inb.remove(&self.recv_next).expect("present");
            let data = b.data.expect("decoded");
            let offset = b.offset;
            self.recv_offset = offset + data.len() as u64;
            self.recv_next = self.recv_next.wrapping_add(1);
            self.stats.stream_bytes_received += data.len() as u64;
            ctx.events.push_back(SessionEvent::Stream { session: self.id, offset, data });
        }
    }

    fn on_datagram<A>(&mut self, ctx: &mut Ctx<'_, A>, path: u32, delta: u32, id: u32, budget_ms: u16, data: &[u8]) {
        let floor = self.dgram_seen.first().copied();
        if self.dgram_seen.contains(&id) || floor.is_some_and(|f| self.dgram_seen.len() >= 4096 && id < f) {
            self.stats.datagrams_duplicate += 1;
            return;
        }
        self.dgram_seen.insert(id);
        if self.dgram_seen.len() > 4096 {
            self.dgram_seen.pop_first();
        }
        // No shared clock. Once a path is measured both ways: its base one-way delay plus how
        // long this packet waited beyond the path's quickest recent one (both from stamps).
        // Before that, a bound that needs no assumption: the packet left after anything the
        // peer had received from us (our clock then + the peer's smallest report of delay is
        // at or after its send), and after our handshake message left.
        let estimate = self
            .paths
            .get(&path)
            .filter(|p| p.delay_min.samples() >= MEASURED_SAMPLES && p.peer_delay_min.is_some())
            .and_then(|p| Some(p.base_delay()? + p.queued(delta)));
        let by_reports = self.paths.values().filter_map(|q| q.peer_delay_min).reduce(super::path::min_wrapping_u32);
        let by_reports = by_reports.map(|m| Duration::from_micros((delta.wrapping_add(m) as i32).max(0) as u64));
        let by_handshake = self.keyed_after.map(|t| ctx.now.saturating_duration_since(t));
        let bound = [by_reports, by_handshake].into_iter().flatten().min();
        let one_way = estimate.or(bound).unwrap_or_default();
        if one_way > Duration::from_millis(budget_ms as u64) {
            self.stats.datagrams_late += 1;
            return;
        }
        self.stats.datagrams_received += 1;
        ctx.events.push_back(SessionEvent::Datagram { session: self.id, data: data.to_vec() });
    }

    // ---- timers ------------------------------------------------------------------------------

    pub fn on_timeout<A: crate::link::Endpoint>(&mut self, ctx: &mut Ctx<'_, A>) {
        if self.ack_due.is_some_and(|d| d <= ctx.now) {
            self.send_ack(ctx);
        }
        if !self.established() {
            return;
        }
        if ctx.cfg.strategy == Strategy::MptcpLike {
            self.reinject_timed_out(ctx);
        }
        let floor = ctx.cfg.dead_floor;
        let mut failed = Vec::new();
        for p in self.paths.values_mut() {
            if p.state == PathState::Live && p.overdue(ctx.now, floor) {
                p.state = PathState::Suspect;
                p.since = ctx.now;
                failed.push(p.id);
                if let Some(link) = p.link {
                    self.failed_first_links.insert(link, ctx.now);
                }
            }
        }
        for id in failed {
            self.stats.path_suspects += 1;
            self.path_failed(ctx.cfg, id);
            ctx.events.push_back(SessionEvent::PathDown { session: self.id, path: id });
        }
        self.check_awake();
        if !self.active(ctx.now, ctx.cfg) {
            // Idle: no probes (a phone's radio sleeps); the next write probes every path.
            return;
        }
        // Probe paths that carried no realtime packet for a while (suspect ones too: a probe
        // that gets through brings the path back).
        let due: Vec<u32> = self
            .paths
            .values()
            .filter(|p| p.state != PathState::Building)
            .filter(|p| {
                let every = p.srtt().unwrap_or(ctx.cfg.probe_max).clamp(ctx.cfg.probe_min, ctx.cfg.probe_max);
                let every = if p.state == PathState::Suspect { every.max(ctx.cfg.probe_min * 4) } else { every };
                p.last_realtime_sent.is_none_or(|t| ctx.now.saturating_duration_since(t) >= every)
            })
            .map(|p| p.id)
            .collect();
        for id in due {
            // A suspect path's probe is not tracked as in flight twice.
            let _ = self.send_on(ctx, id, Class::Realtime, &[Frame::Probe], None);
        }
        self.pump(ctx);
    }

    /// mptcp_like: a path whose oldest stream packet is past its retransmission timeout
    /// loses its window, and what it had in flight goes out again on whichever paths have
    /// room (the RTO path's window is one packet, so mostly the others: MPTCP's reinjection).
    fn reinject_timed_out<A: crate::link::Endpoint>(&mut self, ctx: &mut Ctx<'_, A>) {
        let timed_out: Vec<u32> =
            self.paths.values().filter(|p| p.usable() && p.bulk_timed_out(ctx.now)).map(|p| p.id).collect();
        if timed_out.is_empty() {
            return;
        }
        for id in timed_out {
            let lost = match self.paths.get_mut(&id) {
                Some(p) => p.bulk_timeout(),
                None => continue,
            };
            self.stats.bulk_timeouts += 1;
            self.stats.reinjected += lost.len() as u64;
            for (b, e) in lost {
                self.symbol_passed(b, e);
            }
        }
        self.top_up(ctx.cfg);
    }

    /// The session's next deadline: the tick while it is active or waits for reports, its
    /// ack delay, or none at all when idle.
    pub fn next_timeout(&self, tick: Instant, cfg: &SessionConfig) -> Option<Instant> {
        // `tick` may lie in the past when the session wakes: it fires at once, then ticks on.
        let ticking = self.active(tick, cfg) || self.awaiting();
        match (self.ack_due, ticking) {
            (Some(d), true) => Some(d.min(tick)),
            (Some(d), false) => Some(d),
            (None, true) => Some(tick),
            (None, false) => None,
        }
    }

    /// The route under a path failed or closed.
    pub fn route_gone<A: crate::link::Endpoint>(&mut self, ctx: &mut Ctx<'_, A>, path: u32) {
        if self.initiator {
            // Our route broke (its first link went down with its interface, a relay refused
            // it): the peer hears it over another path now, rather than when its own probes
            // of the path go unanswered, so data towards us stops going into it at once.
            let others: Vec<u32> = self.best_paths(2).into_iter().filter(|p| *p != path).collect();
            if let Some(o) = others.first() {
                let _ = self.send_on(ctx, *o, Class::Realtime, &[Frame::PathClose { path }], None);
            }
        }
        self.path_failed(ctx.cfg, path);
        if let Some(p) = self.paths.remove(&path) {
            ctx.by_route.remove(&p.route);
            self.stats.path_failures += 1;
            ctx.events.push_back(SessionEvent::PathDown { session: self.id, path });
        }
    }

    /// Closes a path we built (initiator): tells the peer, closes the route.
    pub fn retire_path<A: crate::link::Endpoint>(&mut self, ctx: &mut Ctx<'_, A>, path: u32) {
        let others: Vec<u32> = self.best_paths(2).into_iter().filter(|p| *p != path).collect();
        if let Some(o) = others.first() {
            let _ = self.send_on(ctx, *o, Class::Realtime, &[Frame::PathClose { path }], None);
        }
        self.path_failed(ctx.cfg, path);
        if let Some(p) = self.paths.remove(&path) {
            ctx.by_route.remove(&p.route);
            let _ = ctx.node.close_route(p.route);
            self.stats.paths_retired += 1;
            ctx.events.push_back(SessionEvent::PathDown { session: self.id, path });
        }
    }

    pub fn close<A: crate::link::Endpoint>(&mut self, ctx: &mut Ctx<'_, A>) {
        let ids: Vec<u32> = self.best_paths(usize::MAX);
        for id in &ids {
            let _ = self.send_on(ctx, *id, Class::Realtime, &[Frame::Close], None);
        }
        for (_, p) in std::mem::take(&mut self.paths) {
            ctx.by_route.remove(&p.route);
            if self.initiator {
                let _ = ctx.node.close_route(p.route);
            }
        }
        self.failed = true;
    }
}
