//! One path of a session: a route plus what the session measured on it.
//!
//! Each path numbers its packets per class (bulk and realtime travel in different route
//! queues, each delivered in order), and the peer reports the highest number it received per
//! class. Because a route delivers a class in order, every packet at or below the reported
//! number has either arrived or been lost with a broken route; so the sender knows exactly
//! which symbols are still in flight. Realtime packets (probes, datagrams) measure RTT and
//! liveness: one not confirmed within `max(3 x srtt, floor)` marks the path suspect.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::forward::ack::Rtt;
use crate::forward::Class;
use crate::identity::PublicKey;
use crate::link::LinkId;
use crate::route::RouteId;

/// The top bit of a path sequence number marks the realtime class.
pub const REALTIME_SEQ: u32 = 1 << 31;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
/// Where a session path is in its life.
pub enum PathState {
    /// The route is being set up.
    Building,
    /// Confirmations arrive.
    Live,
    /// A realtime packet went unconfirmed too long; nothing new is scheduled on it.
    Suspect,
}

/// What a sent packet carried, to settle when the peer reports it passed.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub seq: u32,
    pub at: Instant,
    pub bytes: usize,
    pub symbol: Option<(u32, u32)>,
}

pub struct Path {
    pub id: u32,
    pub route: RouteId,
    /// The hops (known at the side that built the route).
    pub hops: Vec<PublicKey>,
    /// The link the route leaves through (the side that built it): its interface is the
    /// radio this path uses.
    pub link: Option<LinkId>,
    /// That link's interface is metered (bulk may be kept off it).
    pub metered: bool,
    pub state: PathState,
    pub since: Instant,
    /// RTT of realtime packets (the forwarder's RFC 6298 estimator).
    pub rtt: Rtt,
    next_seq: [u32; 2],
    /// Packets sent and not yet reported, per class (bulk, realtime).
    pub sent: [VecDeque<Sent>; 2],
    pub inflight_bulk: usize,
    pub last_realtime_sent: Option<Instant>,
    /// When the peer last reported a packet of this path passed.
    pub confirmed_at: Option<Instant>,
    /// Route buffer refused a send: wait for `Writable`.
    pub blocked: bool,
    /// Receive side: highest sequence number and count per class.
    pub recv_last: [Option<u32>; 2],
    pub recv_count: [u32; 2],
    /// Symbols sent on this path and symbols known lost on it (route broke, path went suspect).
    pub symbols_sent: u64,
    pub symbols_lost: u64,
    /// Delivery rate estimate in bytes/s (bulk bytes confirmed).
    pub rate: f64,
    rate_bytes: usize,
    rate_since: Instant,
    /// Receive side: the smallest recent (our clock - the sender's stamp) on this path: its
    /// one-way delay plus the clocks' offset.
    pub delay_min: WindowedMin,
    /// The peer's `delay_min` for what we send on this path (from its acks).
    pub peer_delay_min: Option<u32>,
    /// RTT of stream packets (send to the ack that settles them: queues included).
    pub bulk_rtt: Rtt,
    /// Congestion window of stream packets (used by the mptcp_like strategy).
    pub cc: Reno,
}

/// TCP segment size the [`Reno`] window counts in (a stream packet's size).
pub const RENO_MSS: usize = 1300;

/// A Reno congestion window (RFC 5681) driven by a path's stream acks and timeouts, for the
/// MPTCP-like baseline. Losses inside a route are repaired hop by hop beneath the session,
/// so the window's loss signal is the retransmission timeout (RFC 6298, Linux's 200 ms floor).
#[derive(Debug, Clone)]
pub struct Reno {
    /// Bytes allowed in flight.
    pub cwnd: usize,
    pub ssthresh: usize,
    /// Consecutive timeouts without an ack (each doubles the timeout).
    pub backoff: u32,
}

impl Default for Reno {
    fn default() -> Self {
        Reno { cwnd: 10 * RENO_MSS, ssthresh: usize::MAX, backoff: 0 }
    }
}

impl Reno {
    /// `bytes` newly acknowledged: slow start below `ssthresh`, then one MSS per window.
    pub fn on_acked(&mut self, bytes: usize) {
        self.backoff = 0;
        if self.cwnd < self.ssthresh {
            self.cwnd += bytes;
        } else {
            self.cwnd += (RENO_MSS * bytes / self.cwnd.max(1)).max(1);
        }
    }

    /// A retransmission timeout: half of what was in flight is the new threshold (RFC 5681's
    /// FlightSize / 2), one MSS the window.
    pub fn on_timeout(&mut self, inflight: usize) {
        self.ssthresh = (inflight / 2).max(2 * RENO_MSS);
        self.cwnd = RENO_MSS;
        self.backoff = (self.backoff + 1).min(6);
    }

    /// The retransmission timeout for `rtt` (200 ms at least, doubled per backoff).
    pub fn rto(&self, rtt: &Rtt) -> Duration {
        let base = match rtt.srtt {
            Some(s) => s + (rtt.rttvar * 4).max(Duration::from_millis(1)),
            None => Duration::from_secs(1),
        };
        base.max(Duration::from_millis(200)) * (1 << self.backoff)
    }
}

/// How long one window of [`WindowedMin`] lasts: clocks drift (tens of ppm), so an old
/// minimum must age out, while a window must be long enough to hold an unqueued packet.
const DELAY_WINDOW: Duration = Duration::from_secs(10);

/// The smallest of wrapping microsecond values over the current and the previous window.
#[derive(Debug, Clone, Copy)]
pub struct WindowedMin {
    cur: Option<u32>,
    prev: Option<u32>,
    since: Option<Instant>,
    samples: u32,
}

/// `a < b` for wrapping microsecond values (closer than half the range).
fn earlier(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// The smaller of two wrapping microsecond values.
pub fn min_wrapping_u32(a: u32, b: u32) -> u32 {
    if earlier(a, b) {
        a
    } else {
        b
    }
}

fn min_wrapping(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(min_wrapping_u32(a, b)),
        (a, b) => a.or(b),
    }
}

impl WindowedMin {
    pub const fn new() -> Self {
        WindowedMin { cur: None, prev: None, since: None, samples: 0 }
    }

    pub fn sample(&mut self, now: Instant, v: u32) {
        if self.since.is_none_or(|s| now.saturating_duration_since(s) >= DELAY_WINDOW) {
            self.prev = self.cur.take();
            self.since = Some(now);
        }
        self.cur = min_wrapping(self.cur, Some(v));
        self.samples = self.samples.saturating_add(1);
    }

    /// Samples taken so far (a minimum of a few is not yet a path's quickest).
    pub fn samples(&self) -> u32 {
        self.samples
    }

    pub fn get(&self) -> Option<u32> {
        min_wrapping(self.cur, self.prev)
    }
}

impl Default for WindowedMin {
    fn default() -> Self {
        Self::new()
    }
}

fn idx(class: Class) -> usize {
    match class {
        Class::Bulk => 0,
        Class::Realtime => 1,
    }
}

impl Path {
    pub fn new(id: u32, route: RouteId, hops: Vec<PublicKey>, state: PathState, now: Instant) -> Self {
        Path {
            id,
            route,
            hops,
            link: None,
            metered: false,
            state,
            since: now,
            rtt: Rtt::new(Duration::ZERO),
            next_seq: [0, 0],
            sent: [VecDeque::new(), VecDeque::new()],
            inflight_bulk: 0,
            last_realtime_sent: None,
            confirmed_at: None,
            blocked: false,
            recv_last: [None, None],
            recv_count: [0, 0],
            symbols_sent: 0,
            symbols_lost: 0,
            rate: 0.0,
            rate_bytes: 0,
            rate_since: now,
            delay_min: WindowedMin::new(),
            peer_delay_min: None,
            bulk_rtt: Rtt::new(Duration::ZERO),
            cc: Reno::default(),
        }
    }

    /// The path's one-way delay when nothing queues. With stamps both ways, and a route as
    /// fast one way as the other, it is half the sum of both ends' `delay_min` (the clocks'
    /// offset cancels, and unlike an RTT sample no ack that came back another way is in it);
    /// before the peer has reported, half the smallest RTT.
    pub fn base_delay(&self) -> Option<Duration> {
        match (self.delay_min.get(), self.peer_delay_min) {
            (Some(ours), Some(theirs)) => {
                let sum = ours.wrapping_add(theirs) as i32;
                Some(Duration::from_micros(sum.max(0) as u64 / 2))
            }
            _ => self.rtt.min.map(|m| m / 2),
        }
    }

    /// How late a packet stamped `delta` (our clock - its stamp) arrived beyond the path's
    /// quickest recent packet: what it waited in queues and buffers.
    pub fn queued(&self, delta: u32) -> Duration {
        let base = self.delay_min.get().unwrap_or(delta);
        Duration::from_micros((delta.wrapping_sub(base) as i32).max(0) as u64)
    }

    pub fn usable(&self) -> bool {
        self.state == PathState::Live
    }

    /// The next sequence number for `class` (not yet recorded).
    pub fn peek_seq(&self, class: Class) -> u32 {
        let n = self.next_seq[idx(class)];
        match class {
            Class::Bulk => n,
            Class::Realtime => n | REALTIME_SEQ,
        }
    }

    /// Records a packet that went out. Only `eliciting` packets (the peer answers them with an
    /// ACK) are remembered for settling; others just use up a number.
    pub fn record(
        &mut self,
        now: Instant,
        class: Class,
        bytes: usize,
        symbol: Option<(u32, u32)>,
        eliciting: bool,
    ) -> u32 {
        let seq = self.peek_seq(class);
        let i = idx(class);
        self.next_seq[i] = (self.next_seq[i] + 1) & !REALTIME_SEQ;
        if !eliciting {
            return seq;
        }
        self.sent[i].push_back(Sent { seq, at: now, bytes, symbol });
        match class {
            Class::Bulk => self.inflight_bulk += bytes,
            Class::Realtime => self.last_realtime_sent = Some(now),
        }
        if symbol.is_some() {
            self.symbols_sent += 1;
        }
        seq
    }

    /// The peer reports `last` as the highest number it received in that class: settles every
    /// packet up to it. Returns the symbols those packets carried.
    pub fn settle(&mut self, now: Instant, last: u32, mut on_symbol: impl FnMut(u32, u32)) {
        let realtime = last & REALTIME_SEQ != 0;
        let i = realtime as usize;
        let n = last & !REALTIME_SEQ;
        let mut newest = None;
        while let Some(s) = self.sent[i].front() {
            // Sequence numbers grow by one per packet; compare within the 31-bit space.
            let d = n.wrapping_sub(s.seq & !REALTIME_SEQ) & !REALTIME_SEQ;
            if d >= 1 << 30 {
                break;
            }
            let s = self.sent[i].pop_front().expect("front exists");
            if !realtime {
                self.inflight_bulk = self.inflight_bulk.saturating_sub(s.bytes);
                self.rate_bytes += s.bytes;
                self.cc.on_acked(s.bytes);
            }
            if let Some((b, e)) = s.symbol {
                on_symbol(b, e);
            }
            newest = Some(s.at);
        }
        match newest {
            Some(at) if realtime => self.rtt.sample(now.saturating_duration_since(at)),
            Some(at) => self.bulk_rtt.sample(now.saturating_duration_since(at)),
            None => {}
        }
        if newest.is_some() {
            self.confirmed_at = Some(now);
        }
        if newest.is_some() && self.state == PathState::Suspect {
            self.state = PathState::Live;
            self.since = now;
        }
        let dt = now.saturating_duration_since(self.rate_since);
        if dt >= Duration::from_millis(100) {
            let r = self.rate_bytes as f64 / dt.as_secs_f64();
            self.rate = if self.rate == 0.0 { r } else { 0.75 * self.rate + 0.25 * r };
            self.rate_bytes = 0;
            self.rate_since = now;
        }
    }

    /// Smoothed RTT, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.rtt.srtt
    }

    /// How long a realtime packet may go unconfirmed before the path is suspect.
    pub fn dead_after(&self, floor: Duration) -> Duration {
        match self.rtt.srtt {
            Some(s) => (s * 3 + self.rtt.rttvar * 2).max(floor),
            None => floor * 4,
        }
    }

    /// Whether the oldest unconfirmed realtime packet is overdue.
    pub fn overdue(&self, now: Instant, floor: Duration) -> bool {
        self.sent[1].front().is_some_and(|s| now.saturating_duration_since(s.at) > self.dead_after(floor))
    }

    /// Whether a realtime packet is unconfirmed for half the time that makes a path suspect:
    /// an early warning, used to put realtime copies elsewhere too.
    pub fn doubtful(&self, now: Instant, floor: Duration) -> bool {
        self.sent[1].front().is_some_and(|s| now.saturating_duration_since(s.at) > self.dead_after(floor) / 2)
    }

    /// Forgets everything in flight (the route broke or the path went suspect): returns the
    /// symbols that are now presumed lost.
    pub fn drain_lost(&mut self) -> Vec<(u32, u32)> {
        self.lose(0..2)
    }

    /// Forgets what is in flight in the classes `classes` (0 bulk, 1 realtime), counting
    /// its symbols lost: returns them.
    fn lose(&mut self, classes: std::ops::Range<usize>) -> Vec<(u32, u32)> {
        let lost: Vec<(u32, u32)> =
            self.sent[classes].iter_mut().flat_map(|q| q.drain(..)).filter_map(|s| s.symbol).collect();
        self.symbols_lost += lost.len() as u64;
        self.inflight_bulk = 0;
        lost
    }

    /// Whether the oldest unacknowledged stream packet has waited past the congestion
    /// window's retransmission timeout.
    pub fn bulk_timed_out(&self, now: Instant) -> bool {
        self.sent[0].front().is_some_and(|s| now.saturating_duration_since(s.at) > self.cc.rto(&self.bulk_rtt))
    }

    /// A retransmission timeout: the stream packets in flight are presumed lost (their
    /// symbols returned, to go out again), the window collapses.
    pub fn bulk_timeout(&mut self) -> Vec<(u32, u32)> {
        self.cc.on_timeout(self.inflight_bulk);
        self.lose(0..1)
    }

    /// Whether packets sent on this path wait for the peer's report.
    pub fn awaiting(&self) -> bool {
        self.sent.iter().any(|q| !q.is_empty())
    }

    /// Forgets what is in flight without counting it lost (the peer's state was reset).
    pub fn forget(&mut self) {
        for q in &mut self.sent {
            q.clear();
        }
        self.inflight_bulk = 0;
    }

    /// Records a received packet's sequence number (receive side).
    pub fn received(&mut self, seq: u32) {
        let i = (seq & REALTIME_SEQ != 0) as usize;
        self.recv_count[i] = self.recv_count[i].wrapping_add(1);
        let newer = match self.recv_last[i] {
            None => true,
            Some(l) => {
                let d = (seq & !REALTIME_SEQ).wrapping_sub(l & !REALTIME_SEQ) & !REALTIME_SEQ;
                d != 0 && d < 1 << 30
            }
        };
        if newer {
            self.recv_last[i] = Some(seq);
        }
    }

    /// Expected time for one more bulk byte to arrive on this path (for scheduling).
    pub fn score(&self) -> Duration {
        let srtt = self.rtt.srtt.unwrap_or(Duration::from_millis(100));
        let rate = if self.rate > 1.0 { self.rate } else { 125_000.0 };
        srtt / 2 + Duration::from_secs_f64(self.inflight_bulk as f64 / rate)
    }

    /// Fraction of symbols lost on this path so far.
    pub fn loss(&self) -> f64 {
        if self.symbols_sent == 0 {
            0.0
        } else {
            self.symbols_lost as f64 / self.symbols_sent as f64
        }
    }
}
