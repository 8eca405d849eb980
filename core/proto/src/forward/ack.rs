//! Per-link acknowledgement of datagrams (the seed's first ack: "the next hop received this
//! link datagram"). The receiver reports the largest datagram counter seen and a 256-bit map of
//! the ones before it (selective ack); the sender keeps what it sent until acked, detects loss
//! by packet and time thresholds (RFC 9002 style) and by a retransmission timer with an RTT
//! estimator and exponential backoff (RFC 6298).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use crate::frame::{AckFrame, ACK_BITMAP_BITS};
/// A datagram this many counters below the largest acked is lost.
pub const PACKET_THRESHOLD: u64 = 3;

/// Receiving side: which datagrams arrived, and when an ack is owed.
#[derive(Debug, Default)]
pub struct AckReceiver {
    largest: Option<u64>,
    largest_at: Option<Instant>,
    /// Bit i: `largest - 1 - i` received.
    bits: [u64; 4],
    /// Ack-eliciting datagrams received since the last ack was sent.
    unacked_eliciting: u32,
    /// Ack at once after this many ack-eliciting datagrams (0 counts as 1).
    ack_every: u32,
    deadline: Option<Instant>,
    /// The delay ran out: the ack goes in the next packet the link can send.
    due: bool,
}

impl AckReceiver {
    /// A receiver that acks at once after `ack_every` ack-eliciting datagrams (or after the
    /// ack delay).
    pub fn new(ack_every: u32) -> Self {
        AckReceiver { ack_every, ..Default::default() }
    }

    /// Acks at once after `n` ack-eliciting datagrams (sparse acks on slow return paths).
    pub fn set_ack_every(&mut self, n: u32) {
        self.ack_every = n;
    }

    /// Records a datagram. Ack-eliciting ones make an ack due: after `ack_every` of them, after
    /// the ack delay, or at once when one before this one is missing (the sender should learn
    /// of a loss as early as possible).
    pub fn on_datagram(&mut self, counter: u64, eliciting: bool, now: Instant, max_delay: Duration) {
        if eliciting && self.largest.is_some_and(|l| counter > l + 1) {
            self.due = true;
        }
        match self.largest {
            None => {
                self.largest = Some(counter);
                self.largest_at = Some(now);
            }
            Some(l) if counter > l => {
                let shift = counter - l;
                self.shift(shift);
                // The old largest becomes bit shift-1.
                self.set_bit(shift - 1);
                self.largest = Some(counter);
                self.largest_at = Some(now);
            }
            Some(l) if counter < l => {
                let i = l - 1 - counter;
                if i < ACK_BITMAP_BITS {
                    self.set_bit(i);
                }
            }
            Some(_) => {}
        }
        if eliciting {
            self.unacked_eliciting += 1;
            let d = now + max_delay;
            self.deadline = Some(self.deadline.map_or(d, |x| x.min(d)));
        }
    }

    fn set_bit(&mut self, i: u64) {
        if i < ACK_BITMAP_BITS {
            self.bits[(i / 64) as usize] |= 1 << (i % 64);
        }
    }

    fn shift(&mut self, by: u64) {
        if by >= ACK_BITMAP_BITS {
            self.bits = [0; 4];
            return;
        }
        // Shift the 256-bit map towards higher indexes by `by`.
        let words = (by / 64) as usize;
        let bits = by % 64;
        let old = self.bits;
        let mut new = [0u64; 4];
        for (i, w) in new.iter_mut().enumerate() {
            if i < words {
                continue;
            }
            let src = i - words;
            *w = old[src] << bits;
            if bits > 0 && src > 0 {
                *w |= old[src - 1] >> (64 - bits);
            }
        }
        self.bits = new;
    }

    /// Whether an ack should go out now (two ack-eliciting datagrams, or the delay expired).
    pub fn ack_due(&self, now: Instant) -> bool {
        self.due || self.unacked_eliciting >= self.ack_every.max(1) || self.deadline.is_some_and(|d| d <= now)
    }

    /// The delay expired: the ack is owed at the next chance to send (no timer any more).
    pub fn expire(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| d <= now) {
            self.deadline = None;
            self.due = true;
        }
    }

    /// Whether any datagram was received that an ack could report.
    pub fn has_unacked(&self) -> bool {
        self.unacked_eliciting > 0
    }

    /// When a held ack is due, if one is held.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Builds an ack frame and marks the ack as sent.
    pub fn take_frame(&mut self, now: Instant) -> Option<AckFrame> {
        let frame = self.frame(now)?;
        self.unacked_eliciting = 0;
        self.deadline = None;
        self.due = false;
        Some(frame)
    }

    /// The current ack frame, without marking anything (a copy of the last ack for a lossy way
    /// back).
    pub fn frame(&self, now: Instant) -> Option<AckFrame> {
        let largest = self.largest?;
        let mut bitmap = [0u8; 32];
        for (i, b) in bitmap.iter_mut().enumerate() {
            *b = (self.bits[i / 8] >> ((i % 8) * 8)) as u8;
        }
        let delay = self.largest_at.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        Some(AckFrame { largest, delay_us: delay.as_micros().min(u32::MAX as u128) as u32, bitmap })
    }

    /// Share of the peer's recent datagrams (up to 256 below the largest) that have not
    /// arrived: the link's loss towards us, which its way back likely shares. 0 with fewer
    /// than 32 datagrams to judge by.
    pub fn loss_estimate(&self) -> f64 {
        let Some(largest) = self.largest else { return 0.0 };
        let window = largest.min(ACK_BITMAP_BITS);
        if window < 32 {
            return 0.0;
        }
        let mut got = 0u64;
        for (i, w) in self.bits.iter().enumerate() {
            let low = i as u64 * 64;
            if low >= window {
                break;
            }
            let n = (window - low).min(64);
            let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
            got += u64::from((w & mask).count_ones());
        }
        1.0 - got as f64 / window as f64
    }
}

/// RTT estimator (RFC 6298) with a minimum-RTT tracker.
#[derive(Debug, Clone)]
pub struct Rtt {
    /// Smoothed RTT; None before the first sample.
    pub srtt: Option<Duration>,
    /// RTT variation (RFC 6298).
    pub rttvar: Duration,
    /// The newest sample.
    pub latest: Duration,
    /// The smallest sample seen.
    pub min: Option<Duration>,
}

impl Rtt {
    /// An estimator that assumes `initial` until the first sample.
    pub fn new(initial: Duration) -> Self {
        Rtt { srtt: None, rttvar: initial / 2, latest: initial, min: None }
    }

    /// Adds an RTT sample.
    pub fn sample(&mut self, rtt: Duration) {
        self.latest = rtt;
        self.min = Some(self.min.map_or(rtt, |m| m.min(rtt)));
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + rtt) / 8);
            }
        }
    }

    /// The smoothed RTT, or the initial guess before any sample.
    pub fn smoothed(&self) -> Duration {
        self.srtt.unwrap_or(self.latest)
    }
}

/// One sent datagram awaiting its ack.
#[derive(Debug)]
pub struct Sent<R> {
    /// When it was sent.
    pub time: Instant,
    /// Its size in bytes.
    pub size: usize,
    /// Whether it asks for an ack (carries more than acks).
    pub eliciting: bool,
    /// Times its messages were probed.
    pub probes: u8,
    /// What it carried, handed back when it is acked or lost.
    pub refs: Vec<R>,
}

/// Datagrams in flight by counter. Counters are sent in increasing order and mostly settled
/// oldest first, so a ring of slots from the oldest unsettled counter does what a sorted map
/// would at a fraction of the cost per packet (no tree rebalancing, no allocation per entry).
#[derive(Debug)]
struct InFlight<R> {
    /// Counter of `slots[0]`.
    base: u64,
    slots: VecDeque<Option<Sent<R>>>,
    count: usize,
}

impl<R> InFlight<R> {
    fn new() -> Self {
        InFlight { base: 0, slots: VecDeque::new(), count: 0 }
    }

    fn len(&self) -> usize {
        self.count
    }

    fn insert(&mut self, counter: u64, sent: Sent<R>) {
        if self.slots.is_empty() {
            self.base = counter;
        }
        if counter < self.base {
            // Never in practice (counters only grow); kept correct all the same.
            for _ in counter..self.base {
                self.slots.push_front(None);
            }
            self.base = counter;
        }
        let i = (counter - self.base) as usize;
        while self.slots.len() <= i {
            self.slots.push_back(None);
        }
        if self.slots[i].replace(sent).is_none() {
            self.count += 1;
        }
    }

    fn remove(&mut self, counter: u64) -> Option<Sent<R>> {
        let i = usize::try_from(counter.checked_sub(self.base)?).ok()?;
        let s = self.slots.get_mut(i)?.take()?;
        self.count -= 1;
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
        Some(s)
    }

    /// Index of the first slot at or above `counter`.
    fn index(&self, counter: u64) -> usize {
        usize::try_from(counter.saturating_sub(self.base)).unwrap_or(usize::MAX).min(self.slots.len())
    }

    /// Entries with counters in `[lo, hi)`, oldest first.
    fn range(&self, lo: u64, hi: u64) -> impl Iterator<Item = (u64, &Sent<R>)> + '_ {
        let (a, b) = (self.index(lo), self.index(hi));
        let base = self.base;
        self.slots.range(a..b.max(a)).enumerate().filter_map(move |(k, s)| Some((base + (a + k) as u64, s.as_ref()?)))
    }

    fn range_mut(&mut self, lo: u64) -> impl Iterator<Item = (u64, &mut Sent<R>)> + '_ {
        let a = self.index(lo);
        let base = self.base;
        let end = self.slots.len();
        self.slots.range_mut(a..end).enumerate().filter_map(move |(k, s)| Some((base + (a + k) as u64, s.as_mut()?)))
    }

    fn first(&self) -> Option<&Sent<R>> {
        self.slots.iter().find_map(|s| s.as_ref())
    }

    fn drain(&mut self) -> Vec<Sent<R>> {
        self.count = 0;
        std::mem::take(&mut self.slots).into_iter().flatten().collect()
    }
}

/// How long a delivery-rate sample is remembered (the window's bandwidth estimate is the
/// largest sample this recent).
const RATE_WINDOW: Duration = Duration::from_secs(2);
/// How long a round-trip sample is remembered as the link's quickest.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// In-flight bytes allowed per estimated bandwidth-delay product.
const WINDOW_GAIN: f64 = 2.0;
/// The window before the first rate sample, and the smallest it ever is.
const INITIAL_WINDOW: usize = 64 << 10;
const MIN_WINDOW: usize = 32 * 1500;
/// Most the window grows to make up for random loss (1 / (1 - 0.95)).
const MAX_LOSS_BOOST: f64 = 20.0;

/// How many bytes a link may have in flight: twice its estimated bandwidth-delay product, the
/// bandwidth being the largest delivery rate measured over the last 2 s and the delay the
/// quickest round trip of the last 10 s (BBR's model of a path, without its pacing).
///
/// A link whose bottleneck has a queue (a cellular radio, a home router) then keeps that queue
/// to about one bandwidth-delay product instead of filling it until it drops and timing out
/// on its own queueing delay; where a link loses datagrams at random with no queue (its round
/// trips stay near the quickest), the window grows by 1 / (1 - loss) so that lossy radio links
/// keep their rate. Loss with a standing queue is congestion and gets no such growth.
#[derive(Debug, Clone)]
pub struct Window {
    /// Bytes acknowledged since the start.
    delivered: u64,
    /// Start of the current rate sample: when, and `delivered` then.
    interval: Option<(Instant, u64)>,
    /// Largest rate sample (bytes/s) of the current and the previous `RATE_WINDOW`.
    rate: [f64; 2],
    rate_since: Option<Instant>,
    /// Quickest round trip of the current and the previous `MIN_RTT_WINDOW`.
    min_rtt: [Option<Duration>; 2],
    min_rtt_since: Option<Instant>,
    /// Recent fraction of datagrams declared lost (moving average over ~64 outcomes).
    pub loss: f64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            delivered: 0,
            interval: None,
            rate: [0.0; 2],
            rate_since: None,
            min_rtt: [None; 2],
            min_rtt_since: None,
            loss: 0.0,
        }
    }
}

impl Window {
    /// The estimated bottleneck bandwidth in bytes/s (0 before a sample).
    pub fn bandwidth(&self) -> f64 {
        self.rate[0].max(self.rate[1])
    }

    /// The quickest recent round trip.
    pub fn min_rtt(&self) -> Option<Duration> {
        match self.min_rtt {
            [Some(a), Some(b)] => Some(a.min(b)),
            [a, b] => a.or(b),
        }
    }

    fn on_rtt(&mut self, now: Instant, rtt: Duration) {
        if self.min_rtt_since.is_none_or(|s| now.saturating_duration_since(s) >= MIN_RTT_WINDOW) {
            self.min_rtt = [None, self.min_rtt[0]];
            self.min_rtt_since = Some(now);
        }
        self.min_rtt[0] = Some(self.min_rtt[0].map_or(rtt, |m| m.min(rtt)));
    }

    /// `bytes` acknowledged at `now`, `lost` datagrams declared lost and `acked` acknowledged.
    fn on_outcomes(&mut self, now: Instant, bytes: usize, acked: usize, lost: usize) {
        for _ in 0..acked.min(64) {
            self.loss -= self.loss / 64.0;
        }
        for _ in 0..lost.min(64) {
            self.loss += (1.0 - self.loss) / 64.0;
        }
        if bytes == 0 {
            return;
        }
        self.delivered += bytes as u64;
        let span = self.min_rtt().unwrap_or(Duration::from_millis(10)).max(Duration::from_millis(1));
        match self.interval {
            None => self.interval = Some((now, self.delivered)),
            Some((t0, d0)) if now.saturating_duration_since(t0) >= span => {
                let sample = (self.delivered - d0) as f64 / now.saturating_duration_since(t0).as_secs_f64();
                if self.rate_since.is_none_or(|s| now.saturating_duration_since(s) >= RATE_WINDOW) {
                    self.rate = [0.0, self.rate[0]];
                    self.rate_since = Some(now);
                }
                self.rate[0] = self.rate[0].max(sample);
                self.interval = Some((now, self.delivered));
            }
            Some(_) => {}
        }
    }

    /// Bytes allowed in flight, for a link whose smoothed RTT is `srtt` and whose peer holds
    /// acks up to `ack_delay`.
    pub fn bytes(&self, srtt: Option<Duration>, ack_delay: Duration) -> usize {
        let (bw, Some(min_rtt)) = (self.bandwidth(), self.min_rtt()) else { return INITIAL_WINDOW };
        if bw <= 0.0 {
            return INITIAL_WINDOW;
        }
        let bdp = bw * (min_rtt + ack_delay + Duration::from_millis(1)).as_secs_f64();
        // No standing queue: the round trips stay near the quickest.
        let unqueued = srtt.is_none_or(|s| s <= min_rtt * 5 / 4 + Duration::from_millis(2));
        let boost = if unqueued { (1.0 / (1.0 - self.loss)).min(MAX_LOSS_BOOST) } else { 1.0 };
        ((WINDOW_GAIN * bdp * boost) as usize).max(MIN_WINDOW)
    }
}

/// Sending side: datagrams in flight, RTT, loss detection, retransmission timer.
#[derive(Debug)]
pub struct AckSender<R> {
    /// The congestion window's estimates.
    pub window: Window,
    sent: InFlight<R>,
    largest_acked: Option<u64>,
    /// The link's RTT estimate.
    pub rtt: Rtt,
    backoff: u32,
    min_rto: Duration,
    max_rto: Duration,
    in_flight_bytes: usize,
    /// Acks that named counters we never sent or already settled (ignored, counted).
    pub unknown_acks: u64,
    /// Datagrams acknowledged, and declared lost (by acks or the timer), since the start.
    pub acked_total: u64,
    /// Datagrams declared lost since the start.
    pub lost_total: u64,
    /// Every datagram below this counter was probed as often as allowed: probe searches start
    /// here, so they cost O(1) however many datagrams a dead link has in flight.
    probe_floor: u64,
    /// Reused list of the counters one ack settles (no allocation per ack).
    hits: Vec<u64>,
}

/// What an ack or a timer settled.
#[derive(Debug)]
pub struct Settled<R> {
    /// Datagrams acknowledged.
    pub acked: Vec<Sent<R>>,
    /// Datagrams declared lost (their messages go out again).
    pub lost: Vec<Sent<R>>,
}

impl<R> Default for Settled<R> {
    fn default() -> Self {
        Settled { acked: Vec::new(), lost: Vec::new() }
    }
}

impl<R> AckSender<R> {
    /// A sender with the RTT guess and the retransmission timer's bounds.
    pub fn new(initial_rtt: Duration, min_rto: Duration, max_rto: Duration) -> Self {
        AckSender {
            sent: InFlight::new(),
            largest_acked: None,
            rtt: Rtt::new(initial_rtt),
            backoff: 0,
            min_rto,
            max_rto,
            in_flight_bytes: 0,
            unknown_acks: 0,
            acked_total: 0,
            lost_total: 0,
            probe_floor: 0,
            hits: Vec::new(),
            window: Window::default(),
        }
    }

    /// Whether the window allows another datagram, with the peer's ack delay.
    pub fn window_open(&self, ack_delay: Duration) -> bool {
        self.in_flight_bytes < self.window.bytes(self.rtt.srtt, ack_delay)
    }

    /// Takes an RTT measured elsewhere (the link handshake) as the first sample.
    pub fn seed_rtt(&mut self, rtt: Duration) {
        if self.rtt.srtt.is_none() && !rtt.is_zero() {
            self.rtt.sample(rtt);
        }
    }

    /// Records datagram `counter` as sent.
    pub fn on_sent(&mut self, counter: u64, sent: Sent<R>) {
        if sent.eliciting {
            self.in_flight_bytes += sent.size;
            self.sent.insert(counter, sent);
        }
    }

    /// Datagrams in flight.
    pub fn in_flight(&self) -> usize {
        self.sent.len()
    }

    /// Bytes in flight.
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }

    /// Retransmission timeout: srtt + 4 rttvar, clamped, doubled per backoff step.
    pub fn rto(&self) -> Duration {
        let base = (self.rtt.smoothed() + self.rtt.rttvar * 4).clamp(self.min_rto, self.max_rto);
        // Loss here is mostly not congestion (radio links): back off at most 4x; a link that is
        // really gone is caught by dead-peer detection.
        base.saturating_mul(1 << self.backoff.min(2)).min(self.max_rto)
    }

    fn take(&mut self, counter: u64) -> Option<Sent<R>> {
        let s = self.sent.remove(counter)?;
        self.in_flight_bytes -= s.size;
        Some(s)
    }

    /// Settles what `ack` acknowledges, and what it shows lost.
    pub fn on_ack(&mut self, ack: &AckFrame, now: Instant) -> Settled<R> {
        let mut out = Settled::default();
        self.on_ack_into(ack, now, &mut out);
        out
    }

    /// [`AckSender::on_ack`] into `out` (cleared first), whose vectors a caller reuses.
    pub fn on_ack_into(&mut self, ack: &AckFrame, now: Instant, out: &mut Settled<R>) {
        out.acked.clear();
        out.lost.clear();
        let mut newly_largest = false;
        // Walk what is in flight in the ack's range (few entries), not the 257 counters it names.
        let lo = ack.largest.saturating_sub(ACK_BITMAP_BITS);
        let hits = self.pick(lo, ack.largest.saturating_add(1), |c, _| ack.covers(c));
        for &c in &hits {
            if let Some(s) = self.take(c) {
                if c == ack.largest {
                    newly_largest = true;
                    let rtt = now
                        .saturating_duration_since(s.time)
                        .saturating_sub(Duration::from_micros(ack.delay_us as u64));
                    if !rtt.is_zero() {
                        self.rtt.sample(rtt);
                        self.window.on_rtt(now, rtt);
                    }
                }
                out.acked.push(s);
            }
        }
        if out.acked.is_empty() {
            self.unknown_acks += 1;
        }
        if self.largest_acked.is_none_or(|l| ack.largest > l) {
            self.largest_acked = Some(ack.largest);
        }
        if newly_largest || !out.acked.is_empty() {
            self.backoff = 0;
        }
        self.hits = hits;
        self.detect_lost_into(now, &mut out.lost);
        self.acked_total += out.acked.len() as u64;
        self.lost_total += out.lost.len() as u64;
        let bytes = out.acked.iter().map(|s| s.size).sum();
        self.window.on_outcomes(now, bytes, out.acked.len(), out.lost.len());
    }

    fn detect_lost_into(&mut self, now: Instant, out: &mut Vec<Sent<R>>) {
        let Some(largest) = self.largest_acked else { return };
        let time_threshold = self.rtt.smoothed().max(self.rtt.latest) * 9 / 8;
        let lost = self.pick(0, largest, |c, s| {
            largest - c >= PACKET_THRESHOLD || now.saturating_duration_since(s.time) > time_threshold
        });
        out.extend(lost.iter().filter_map(|c| self.take(*c)));
        self.hits = lost;
    }

    /// Counters in flight in `[lo, hi)` that `keep` picks, in the reused list (hand it back
    /// to `self.hits` when done).
    fn pick(&mut self, lo: u64, hi: u64, keep: impl Fn(u64, &Sent<R>) -> bool) -> Vec<u64> {
        let mut v = std::mem::take(&mut self.hits);
        v.clear();
        v.extend(self.sent.range(lo, hi).filter(|(c, s)| keep(*c, s)).map(|(c, _)| c));
        v
    }

    /// The oldest datagram whose ack is overdue (sent at least `min_age` ago) and that was
    /// probed fewer than `max_probes` times; marks it and returns what it carried.
    /// Datagrams are sent in counter order, so the oldest not fully probed one is the first at
    /// or above the floor that still may be probed; if it is too young, all later ones are too.
    pub fn take_probe(&mut self, now: Instant, min_age: Duration, max_probes: u8) -> Option<&[R]> {
        let (c, s) = self.sent.range_mut(self.probe_floor).find(|(_, s)| s.probes < max_probes)?;
        if now.saturating_duration_since(s.time) < min_age {
            return None;
        }
        s.probes += 1;
        if s.probes >= max_probes {
            self.probe_floor = c + 1;
        }
        Some(&s.refs)
    }

    /// Whether [`AckSender::take_probe`] would find something.
    pub fn has_probe(&self, now: Instant, min_age: Duration, max_probes: u8) -> bool {
        self.sent
            .range(self.probe_floor, u64::MAX)
            .find(|(_, s)| s.probes < max_probes)
            .is_some_and(|(_, s)| now.saturating_duration_since(s.time) >= min_age)
    }

    /// When an ack is overdue: a smoothed round trip, its variation and the peer's ack delay.
    pub fn overdue_after(&self, max_ack_delay: Duration) -> Duration {
        self.rtt.smoothed() + self.rtt.rttvar + max_ack_delay
    }

    /// When the retransmission timer fires, if anything is in flight.
    pub fn deadline(&self) -> Option<Instant> {
        // Sent in counter order, so the first in flight is the oldest.
        let oldest = self.sent.first()?.time;
        Some(oldest + self.rto())
    }

    /// Timer expiry: everything sent before `now - rto` is lost; back off.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Sent<R>> {
        let rto = self.rto();
        let expired = self.pick(0, u64::MAX, |_, s| now.saturating_duration_since(s.time) >= rto);
        if !expired.is_empty() {
            self.backoff += 1;
        }
        let lost: Vec<Sent<R>> = expired.iter().filter_map(|c| self.take(*c)).collect();
        self.hits = expired;
        self.lost_total += lost.len() as u64;
        self.window.on_outcomes(now, 0, 0, lost.len());
        lost
    }

    /// Forgets everything in flight (a new link session restarts counters); returns it as lost.
    pub fn reset(&mut self) -> Vec<Sent<R>> {
        self.largest_acked = None;
        self.backoff = 0;
        self.in_flight_bytes = 0;
        self.sent.drain()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sent(t: Instant, tag: u64) -> Sent<u64> {
        Sent { time: t, size: 1, eliciting: true, probes: 0, refs: vec![tag] }
    }

    /// A window that saw `rate` bytes/s acknowledged for 2 s over round trips of `rtt`, one
    /// datagram acknowledged per 5 ms and one declared lost in `lost` of every 10 of those
    /// steps (10: half of all datagrams lost).
    fn measured(rate: f64, rtt: Duration, lost: usize) -> (Window, Instant) {
        let mut w = Window::default();
        let t0 = Instant::now(); // test-only clock
        let step = Duration::from_millis(5);
        let per_step = (rate * step.as_secs_f64()) as usize;
        let mut t = t0;
        for i in 0..400 {
            w.on_rtt(t, rtt);
            let lost_now = usize::from(i % 10 < lost);
            w.on_outcomes(t, per_step, 1, lost_now);
            t += step;
        }
        (w, t)
    }

    #[test]
    fn the_window_is_twice_the_measured_bandwidth_delay_product() {
        let w = Window::default();
        assert_eq!(w.bytes(None, Duration::ZERO), INITIAL_WINDOW, "before any sample");
        let rtt = Duration::from_millis(50);
        let (w, _) = measured(4_000_000.0, rtt, 0);
        let bw = w.bandwidth();
        assert!((3_900_000.0..4_100_000.0).contains(&bw), "{bw}");
        assert_eq!(w.min_rtt(), Some(rtt));
        let bdp = 4_000_000.0 * 0.051;
        let got = w.bytes(Some(rtt), Duration::ZERO) as f64;
        assert!((got / bdp - 2.0).abs() < 0.1, "{got} for a BDP of {bdp}");
        // A slow link keeps the floor.
        let (slow, _) = measured(100_000.0, Duration::from_millis(10), 0);
        assert_eq!(slow.bytes(Some(Duration::from_millis(10)), Duration::ZERO), MIN_WINDOW);
    }

    #[test]
    fn random_loss_grows_the_window_but_loss_with_a_queue_does_not() {
        let rtt = Duration::from_millis(40);
        let (clean, _) = measured(2_000_000.0, rtt, 0);
        let (lossy, t) = measured(2_000_000.0, rtt, 10);
        assert!(lossy.loss > 0.45 && lossy.loss < 0.55, "{}", lossy.loss);
        let base = clean.bytes(Some(rtt), Duration::ZERO) as f64;
        // Round trips near the quickest: random loss, the window makes up for it.
        let unqueued = lossy.bytes(Some(rtt), Duration::ZERO) as f64;
        assert!(unqueued / base > 1.7 && unqueued / base < 2.3, "{unqueued} vs {base}");
        // Round trips twice the quickest: a standing queue, so the loss is congestion.
        let queued = lossy.bytes(Some(rtt * 2), Duration::ZERO) as f64;
        assert!((queued / base - 1.0).abs() < 0.05, "{queued} vs {base}");
        // The growth is bounded even when everything is lost.
        let mut dead = lossy.clone();
        for _ in 0..1000 {
            dead.on_outcomes(t, 0, 0, 1);
        }
        assert!(dead.loss > 0.99, "{}", dead.loss);
        let most = dead.bytes(Some(rtt), Duration::ZERO) as f64;
        assert!(most <= base * MAX_LOSS_BOOST * 1.01 && most >= base * MAX_LOSS_BOOST * 0.99, "{most} vs {base}");
    }

    #[test]
    fn old_estimates_age_out() {
        let (mut w, t) = measured(4_000_000.0, Duration::from_millis(20), 0);
        // The link slows to a tenth with a longer round trip: two windows later the old
        // bandwidth and the old quickest round trip are forgotten.
        let mut t = t;
        for _ in 0..(2 * MIN_RTT_WINDOW.as_millis() / 5 + 2) {
            w.on_rtt(t, Duration::from_millis(80));
            w.on_outcomes(t, 2_000, 1, 0);
            t += Duration::from_millis(5);
        }
        assert_eq!(w.min_rtt(), Some(Duration::from_millis(80)));
        assert!(w.bandwidth() < 500_000.0, "{}", w.bandwidth());
    }

    proptest! {
        /// The ring of datagrams in flight answers every query as a sorted map would, whatever
        /// the order of sends and settlements (counters grow, with gaps for unacked kinds).
        #[test]
        fn in_flight_behaves_as_a_sorted_map(ops in proptest::collection::vec((0u8..4, 0u64..40, 0u64..300), 1..200)) {
            let t = Instant::now(); // test-only clock
            let mut ring = InFlight::new();
            let mut model = std::collections::BTreeMap::new();
            let mut next = 0u64;
            for (op, gap, pick) in ops {
                match op {
                    0 | 1 => {
                        next += gap % 4 + 1;
                        ring.insert(next, sent(t, next));
                        model.insert(next, next);
                    }
                    2 => {
                        let c = pick % (next + 2);
                        prop_assert_eq!(ring.remove(c).map(|s| s.refs[0]), model.remove(&c));
                    }
                    _ => {
                        let (lo, hi) = (pick % (next + 2), pick % (next + 2) + gap);
                        let got: Vec<u64> = ring.range(lo, hi).map(|(c, _)| c).collect();
                        let want: Vec<u64> = model.range(lo..hi).map(|(c, _)| *c).collect();
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(ring.len(), model.len());
                prop_assert_eq!(ring.first().map(|s| s.refs[0]), model.values().next().copied());
            }
            let all: Vec<u64> = ring.drain().into_iter().map(|s| s.refs[0]).collect();
            prop_assert_eq!(all, model.into_values().collect::<Vec<_>>());
        }
    }
}
