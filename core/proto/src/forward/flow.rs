//! One direction of one service class of one route at one node: the seed's per-route buffer.
//!
//! Offsets number the messages of one hop-to-hop leg. Upstream side: deduplicates by the
//! upstream's offsets, holds messages that arrive ahead of a gap, and releases them in order
//! (to the next leg, renumbered, or to this node when the flow ends here), so order holds end
//! to end even though every hop retransmits on its own. Releasing in order at every hop is
//! also what keeps credit deadlock-free: a message that fills a gap downstream was already sent
//! once on that leg, and resending needs no credit. It grants credit as a cumulative limit
//! (`freed + capacity`: the upstream may have sent at most that many bytes), so the buffer never
//! holds more than its capacity. Downstream side: keeps every message until the next hop's link
//! ack and sends new messages only within the credit the next hop granted.

use std::collections::{BTreeMap, VecDeque};

use crate::types::LinkId;
use crate::types::RouteId;

/// Credit every flow starts with before the first credit update arrives (both ends assume it).
pub const INITIAL_CREDIT_BYTES: u64 = 64 * 1024;

/// Recycled message buffers: a relay copies every message it stores, so reusing the buffers of
/// acked messages keeps the allocator off the forwarding path.
#[derive(Debug, Default)]
pub(crate) struct BufPool(Vec<Vec<u8>>);

/// Most buffers kept for reuse.
const POOL_BUFFERS: usize = 1024;

impl BufPool {
    pub fn copy(&mut self, data: &[u8]) -> Vec<u8> {
        let mut v = self.0.pop().unwrap_or_default();
        v.clear();
        v.extend_from_slice(data);
        v
    }

    pub fn put(&mut self, v: Vec<u8>) {
        if self.0.len() < POOL_BUFFERS {
            self.0.push(v);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accept {
    Stored,
    Duplicate,
    OverCredit,
}

#[derive(Debug)]
pub(crate) struct Msg {
    pub data: Vec<u8>,
    /// Copies in flight (a probe adds one; the message is queued again when all are lost).
    pub copies: u8,
    pub sent_once: bool,
}

/// Counters and the seed's per-route fields, for status and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Buffer size (bytes).
    pub capacity: usize,
    /// Bytes held now (received or produced, not yet acked downstream or delivered).
    pub buffered: usize,
    /// Largest `buffered` ever seen.
    pub max_buffered: usize,
    /// Messages waiting for the next hop's ack (the seed's "offset, size and order of every
    /// unacked message" are their keys and lengths), and how many of them are in flight.
    pub messages: usize,
    /// Of `messages`, those sent and not yet acknowledged.
    pub in_flight_messages: usize,
    /// The downstream buffer size as last granted: credit limit minus bytes sent.
    pub credit: u64,
    /// Cumulative credit limit granted by the next hop (downstream buffer size + its freed).
    pub send_limit: u64,
    /// Bytes sent downstream for the first time.
    pub sent_bytes: u64,
    /// Bytes sent again after a loss.
    pub retransmitted_bytes: u64,
    /// Bytes sent again as probes while the link was otherwise idle (ack overdue).
    pub probed_bytes: u64,
    /// Bytes the next hop acknowledged (confirmed), freed from this buffer.
    pub acked_bytes: u64,
    /// Unique bytes received from upstream (or the application).
    pub received_bytes: u64,
    /// Duplicate messages received (already had them).
    pub duplicates: u64,
    /// Bytes delivered in order to this node (flows that end here).
    pub delivered_bytes: u64,
    /// The limit last announced upstream.
    pub announced_limit: u64,
    /// Messages dropped because the upstream exceeded its credit.
    pub over_credit: u64,
}

#[derive(Debug)]
pub(crate) struct Flow {
    pub upstream: Option<(LinkId, RouteId)>,
    pub downstream: Option<(LinkId, RouteId)>,
    pub capacity: usize,
    pub msgs: BTreeMap<u64, Msg>,
    pub bytes: usize,
    /// Send order: retransmissions go to the front.
    pub queue: VecDeque<u64>,
    pub send_limit: u64,
    /// Next offset the upstream is expected to send, and messages received beyond it, held
    /// until the gap before them fills.
    pub recv_next: u64,
    pub held: BTreeMap<u64, Vec<u8>>,
    pub freed: u64,
    /// Offset of the next message on the downstream leg.
    pub next_offset: u64,
    /// A local sender found the buffer full: tell it when room opens.
    pub want_writable: bool,
    /// Credit that arrived from a link before it became this flow's downstream (the next hop's
    /// credit can overtake its setup answer).
    pub early_credit: Option<(LinkId, u64)>,
    /// A smaller window granted upstream than the buffer (a hop throttling an unpaid route).
    pub throttle: Option<usize>,
    pub stats: FlowStats,
}

impl Flow {
    pub fn new(capacity: usize) -> Self {
        Flow {
            upstream: None,
            downstream: None,
            capacity,
            msgs: BTreeMap::new(),
            bytes: 0,
            queue: VecDeque::new(),
            send_limit: INITIAL_CREDIT_BYTES,
            recv_next: 0,
            held: BTreeMap::new(),
            freed: 0,
            next_offset: 0,
            want_writable: false,
            early_credit: None,
            throttle: None,
            stats: FlowStats { capacity, announced_limit: INITIAL_CREDIT_BYTES, ..Default::default() },
        }
    }

    /// The cumulative limit this flow grants upstream (never below what it already granted).
    pub fn limit(&self) -> u64 {
        let window = self.throttle.map_or(self.capacity, |w| w.min(self.capacity));
        (self.freed + window as u64).max(self.stats.announced_limit)
    }

    /// Puts a message on the downstream leg (the buffer is already charged for it).
    fn enqueue(&mut self, data: Vec<u8>) {
        let offset = self.next_offset;
        self.next_offset += data.len() as u64;
        self.msgs.insert(offset, Msg { data, copies: 0, sent_once: false });
        if self.downstream.is_some() {
            self.queue.push_back(offset);
        }
    }

    fn charge(&mut self, len: usize) {
        self.bytes += len;
        self.stats.max_buffered = self.stats.max_buffered.max(self.bytes);
    }

    /// A message produced here (the application, or the router's own messages).
    pub fn push_local(&mut self, data: Vec<u8>) -> Result<(), usize> {
        if self.bytes + data.len() > self.capacity {
            return Err(self.capacity - self.bytes);
        }
        self.stats.received_bytes += data.len() as u64;
        self.charge(data.len());
        self.enqueue(data);
        Ok(())
    }

    /// Room for locally produced bytes.
    pub fn room(&self) -> usize {
        self.capacity - self.bytes
    }

    /// A message from upstream, deduplicated by the upstream leg's offsets and passed on in
    /// that order: to the next leg (renumbered) or, where the flow ends here, into `deliver`.
    /// Unordered (no per-hop reliability, the end-to-end baseline): passed on as it comes.
    pub fn accept(
        &mut self,
        offset: u64,
        data: &[u8],
        deliver: &mut Vec<Vec<u8>>,
        ordered: bool,
        pool: &mut BufPool,
    ) -> Accept {
        if !ordered {
            self.stats.received_bytes += data.len() as u64;
            self.charge(data.len());
            self.pass_on(pool.copy(data), deliver);
            return Accept::Stored;
        }
        if offset < self.recv_next || self.held.contains_key(&offset) {
            self.stats.duplicates += 1;
            return Accept::Duplicate;
        }
        if self.stats.received_bytes + data.len() as u64 > self.limit() {
            // The upstream ignored our credit: never store past the buffer.
            self.stats.over_credit += 1;
            return Accept::OverCredit;
        }
        self.stats.received_bytes += data.len() as u64;
        self.charge(data.len());
        if offset != self.recv_next {
            self.held.insert(offset, pool.copy(data));
            return Accept::Stored;
        }
        let mut next = Some(pool.copy(data));
        while let Some(d) = next {
            self.recv_next += d.len() as u64;
            self.pass_on(d, deliver);
            next = self.held.remove(&self.recv_next);
        }
        Accept::Stored
    }

    fn pass_on(&mut self, d: Vec<u8>, deliver: &mut Vec<Vec<u8>>) {
        if self.downstream.is_some() {
            self.enqueue(d);
        } else {
            self.deliver_one(d, deliver);
        }
    }

    fn deliver_one(&mut self, d: Vec<u8>, deliver: &mut Vec<Vec<u8>>) {
        self.release(d.len());
        self.stats.delivered_bytes += d.len() as u64;
        deliver.push(d);
    }

    fn release(&mut self, len: usize) {
        self.bytes -= len;
        self.freed += len as u64;
    }

    /// The next hop acknowledged the datagram that carried `offset`: the message leaves the
    /// buffer (its memory is returned for reuse).
    pub fn on_acked(&mut self, offset: u64) -> Option<Vec<u8>> {
        let m = self.msgs.remove(&offset)?;
        self.release(m.data.len());
        self.stats.acked_bytes += m.data.len() as u64;
        Some(m.data)
    }

    /// The datagram that carried `offset` was lost: send it again first.
    pub fn on_lost(&mut self, offset: u64) -> bool {
        match self.msgs.get_mut(&offset) {
            Some(m) if m.copies > 0 => {
                m.copies -= 1;
                if m.copies == 0 {
                    self.queue.push_front(offset);
                }
                true
            }
            _ => false,
        }
    }

    /// The next message that may be sent now and fits in `room`, marked in flight.
    pub fn next_to_send(&mut self, room: usize, unlimited: bool) -> Option<(u64, &[u8])> {
        let offset = loop {
            let &offset = self.queue.front()?;
            match self.msgs.get(&offset) {
                Some(m) if m.copies == 0 => {
                    if m.data.len() > room {
                        return None;
                    }
                    if !m.sent_once && !unlimited && self.stats.sent_bytes + m.data.len() as u64 > self.send_limit {
                        return None;
                    }
                    break offset;
                }
                // Acked or already resent: stale entry.
                _ => {
                    self.queue.pop_front();
                }
            }
        };
        self.queue.pop_front();
        let m = self.msgs.get_mut(&offset)?;
        if m.sent_once {
            self.stats.retransmitted_bytes += m.data.len() as u64;
        } else {
            self.stats.sent_bytes += m.data.len() as u64;
        }
        m.copies = 1;
        m.sent_once = true;
        Some((offset, &m.data))
    }

    /// Another copy of an in-flight message whose ack is overdue (a probe), if it fits.
    pub fn probe(&mut self, offset: u64, room: usize) -> Option<&[u8]> {
        let m = self.msgs.get_mut(&offset).filter(|m| m.copies > 0 && m.data.len() <= room)?;
        m.copies = m.copies.saturating_add(1);
        self.stats.probed_bytes += m.data.len() as u64;
        Some(&m.data)
    }

    /// Whether something is waiting to be sent (credit aside).
    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Whether the next message in line may be sent now.
    pub fn can_send(&self, unlimited: bool) -> bool {
        let next = self.queue.iter().find_map(|o| self.msgs.get(o).filter(|m| m.copies == 0));
        next.is_some_and(|m| m.sent_once || unlimited || self.stats.sent_bytes + m.data.len() as u64 <= self.send_limit)
    }

    pub fn stats(&self) -> FlowStats {
        let mut s = self.stats.clone();
        s.buffered = self.bytes;
        s.messages = self.msgs.len();
        s.in_flight_messages = self.msgs.values().filter(|m| m.copies > 0).count();
        s.send_limit = self.send_limit;
        s.credit = self.send_limit.saturating_sub(self.stats.sent_bytes);
        s
    }
}
