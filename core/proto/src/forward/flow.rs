//! One direction of one service class of one route at one node: the seed's per-route buffer.
//!
//! Offsets number the bytes of one hop-to-hop leg, in the order of the route's source.
//! Upstream side: deduplicates by the upstream's offsets and passes each message on the moment
//! it arrives (to the next leg at its mapped offset), or, where the flow ends here, delivers
//! in offset order, holding messages that overtook a loss; so order holds end to end although
//! every hop retransmits on its own and no hop waits for a gap before it forwards. Credit is a
//! window on the offsets (see [`Flow`]): the buffer never holds more than its capacity, and
//! the message every later hop waits for is always inside it. Downstream side: keeps every
//! message until the next hop's link ack, resends losses first, and sends new messages lowest
//! offset first within the credit the next hop granted.

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
    /// The message overlaps bytes already received at other offsets (a broken upstream).
    Overlap,
}

#[derive(Debug)]
pub(crate) struct Msg {
    pub data: Vec<u8>,
    /// Copies in flight (a probe adds one; the message is queued again when all are lost).
    pub copies: u8,
    pub sent_once: bool,
    /// Its offset on the upstream leg (None: produced here): freed there when acked here.
    pub up: Option<u64>,
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
    /// Credit left: the limit granted by the next hop minus the end of what was sent.
    pub credit: u64,
    /// Credit limit granted by the next hop: the leg offset below which messages may be sent
    /// (its lowest unreleased offset + its buffer size).
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
    /// Messages passed on ahead of an earlier one still missing here (out-of-order forwarding).
    pub forwarded_early: u64,
    /// The limit last announced upstream.
    pub announced_limit: u64,
    /// Messages dropped because the upstream exceeded its credit.
    pub over_credit: u64,
}

/// Messages on a downstream leg by offset, until acked. Offsets mostly arrive in increasing
/// order and leave oldest first, so a sorted ring searched by bisection costs less per message
/// than a tree (no node allocation or rebalancing); a gap filler is inserted in its place,
/// near the back.
#[derive(Debug, Default)]
pub(crate) struct Msgs {
    slots: VecDeque<(u64, Option<Msg>)>,
    count: usize,
}

impl Msgs {
    /// Where `offset` is (Ok) or would go (Err). The ends first: new messages go and are sent
    /// at the back, acks settle the front.
    fn find(&self, offset: u64) -> Result<usize, usize> {
        let n = self.slots.len();
        match self.slots.back() {
            None => return Err(0),
            Some((o, _)) if *o < offset => return Err(n),
            Some((o, _)) if *o == offset => return Ok(n - 1),
            _ => {}
        }
        if self.slots.front().is_some_and(|(o, _)| *o == offset) {
            return Ok(0);
        }
        self.slots.binary_search_by_key(&offset, |(o, _)| *o)
    }

    fn insert(&mut self, offset: u64, m: Msg) {
        match self.find(offset) {
            Ok(i) => {
                if self.slots[i].1.replace(m).is_none() {
                    self.count += 1;
                }
            }
            Err(i) => {
                if i == self.slots.len() {
                    self.slots.push_back((offset, Some(m)));
                } else {
                    self.slots.insert(i, (offset, Some(m)));
                }
                self.count += 1;
            }
        }
    }

    fn get(&self, offset: u64) -> Option<&Msg> {
        self.slots.get(self.find(offset).ok()?)?.1.as_ref()
    }

    fn get_mut(&mut self, offset: u64) -> Option<&mut Msg> {
        let i = self.find(offset).ok()?;
        self.slots.get_mut(i)?.1.as_mut()
    }

    fn remove(&mut self, offset: u64) -> Option<Msg> {
        let i = self.find(offset).ok()?;
        let m = self.slots.get_mut(i)?.1.take()?;
        self.count -= 1;
        while matches!(self.slots.front(), Some((_, None))) {
            self.slots.pop_front();
        }
        Some(m)
    }

    /// Messages held, in offset order.
    fn iter(&self) -> impl Iterator<Item = (u64, &Msg)> + '_ {
        self.slots.iter().filter_map(|(o, m)| Some((*o, m.as_ref()?)))
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// One flow's state. Offsets on every leg keep the order of the route's source, so a relay
/// may pass a message on the moment it arrives, ahead of an earlier one lost on the leg before
/// it: the next leg's offset of each upstream byte is fixed by a map (`segs`) that only shifts
/// where this hop inserted messages of its own, and the gap keeps its place. Credit is a window
/// on those offsets: a hop lets its upstream send below `base + capacity`, `base` being the
/// lowest upstream offset not yet released (acked downstream or delivered here). The lowest
/// message not yet delivered at the route's end is therefore inside every window on its way,
/// and no set of buffers can fill up waiting for it (the property test in
/// core/sim/tests/forward.rs drives this through random loss, reordering and flaps).
#[derive(Debug)]
pub(crate) struct Flow {
    pub upstream: Option<(LinkId, RouteId)>,
    pub downstream: Option<(LinkId, RouteId)>,
    pub capacity: usize,
    /// Messages on the downstream leg by offset, until acked.
    pub msgs: Msgs,
    pub bytes: usize,
    /// Messages lost downstream, sent again before anything new.
    resend: VecDeque<u64>,
    /// Messages not yet sent downstream, in offset order (the one every later hop waits for
    /// goes first, and needs no more credit than any after it). Mostly appended at the back;
    /// a gap filler is inserted in its place.
    fresh: VecDeque<u64>,
    pub send_limit: u64,
    /// End of the highest message sent downstream so far.
    sent_high: u64,
    /// Upstream leg: everything below `recv_next` arrived; `ahead` holds the offsets and
    /// lengths of messages that arrived beyond it (for deduplication).
    recv_next: u64,
    ahead: BTreeMap<u64, usize>,
    /// End of the highest upstream message received.
    up_high: u64,
    /// Lowest upstream offset not yet released, and released ranges above it.
    base: u64,
    released: BTreeMap<u64, usize>,
    /// Upstream offset -> downstream offset where each run of upstream bytes starts.
    segs: BTreeMap<u64, u64>,
    /// Where the flow ends here: messages waiting for the ones before them, by upstream
    /// offset (the next to deliver is at `base`).
    held: BTreeMap<u64, Vec<u8>>,
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
            msgs: Msgs::default(),
            bytes: 0,
            resend: VecDeque::new(),
            fresh: VecDeque::new(),
            send_limit: INITIAL_CREDIT_BYTES,
            sent_high: 0,
            recv_next: 0,
            ahead: BTreeMap::new(),
            up_high: 0,
            base: 0,
            released: BTreeMap::new(),
            segs: BTreeMap::from([(0, 0)]),
            held: BTreeMap::new(),
            want_writable: false,
            early_credit: None,
            throttle: None,
            stats: FlowStats { capacity, announced_limit: INITIAL_CREDIT_BYTES, ..Default::default() },
        }
    }

    /// The limit this flow grants upstream: the upstream may send messages ending at most
    /// there (never below what it already granted).
    pub fn limit(&self) -> u64 {
        let window = self.throttle.map_or(self.capacity, |w| w.min(self.capacity));
        (self.base + window as u64).max(self.stats.announced_limit)
    }

    /// Whether the upstream may have run out of credit (its sends reach the announced limit).
    pub fn upstream_may_block(&self) -> bool {
        self.up_high + 2048 >= self.stats.announced_limit
    }

    /// The downstream offset of upstream offset `up`.
    fn map(&self, up: u64) -> u64 {
        let (s, d) = self.segs.range(..=up).next_back().map_or((0, 0), |(s, d)| (*s, *d));
        d + (up - s)
    }

    /// Puts a message on the downstream leg at `offset` (the buffer is already charged).
    fn enqueue(&mut self, offset: u64, data: Vec<u8>, up: Option<u64>) {
        self.msgs.insert(offset, Msg { data, copies: 0, sent_once: false, up });
        if self.downstream.is_some() {
            if self.fresh.back().is_none_or(|b| *b < offset) {
                self.fresh.push_back(offset);
            } else {
                let at = self.fresh.partition_point(|o| *o < offset);
                self.fresh.insert(at, offset);
            }
        }
    }

    fn charge(&mut self, len: usize) {
        self.bytes += len;
        self.stats.max_buffered = self.stats.max_buffered.max(self.bytes);
    }

    /// A message produced here (the application, or the router's own messages). It goes after
    /// every upstream byte received so far; upstream bytes after it shift by its length.
    pub fn push_local(&mut self, data: Vec<u8>) -> Result<(), usize> {
        if self.bytes + data.len() > self.capacity {
            return Err(self.capacity - self.bytes);
        }
        self.stats.received_bytes += data.len() as u64;
        self.charge(data.len());
        self.enqueue_here(data);
        Ok(())
    }

    /// Queues a message that has no upstream offset after every upstream byte received so far.
    fn enqueue_here(&mut self, data: Vec<u8>) {
        let offset = self.map(self.up_high);
        self.segs.insert(self.up_high, offset + data.len() as u64);
        self.enqueue(offset, data, None);
    }

    /// Room for locally produced bytes.
    pub fn room(&self) -> usize {
        self.capacity - self.bytes
    }

    /// A message from upstream, deduplicated by the upstream leg's offsets. A relay passes it
    /// on at once at its mapped offset; where the flow ends here, messages are delivered into
    /// `deliver` in offset order. Unordered (no per-hop reliability, the end-to-end baseline):
    /// passed on as it comes.
    pub fn accept(
        &mut self,
        offset: u64,
        data: &[u8],
        deliver: &mut Vec<Vec<u8>>,
        ordered: bool,
        pool: &mut BufPool,
    ) -> Accept {
        let len = data.len();
        if !ordered {
            self.stats.received_bytes += len as u64;
            self.charge(len);
            let d = pool.copy(data);
            if self.downstream.is_some() {
                self.enqueue_here(d);
            } else {
                self.deliver_one(d, deliver);
            }
            return Accept::Stored;
        }
        if offset < self.recv_next || self.ahead.contains_key(&offset) {
            self.stats.duplicates += 1;
            return Accept::Duplicate;
        }
        let end = offset.saturating_add(len as u64);
        if end > self.limit() {
            // The upstream ignored our credit: never store past the buffer.
            self.stats.over_credit += 1;
            return Accept::OverCredit;
        }
        let before = self.ahead.range(..offset).next_back().is_some_and(|(o, l)| o + *l as u64 > offset);
        let after = self.ahead.range(offset..end).next().is_some();
        if len == 0 || before || after {
            return Accept::Overlap;
        }
        self.stats.received_bytes += len as u64;
        self.charge(len);
        self.up_high = self.up_high.max(end);
        let early = offset != self.recv_next;
        if !early {
            self.recv_next = end;
            while let Some(l) = self.ahead.remove(&self.recv_next) {
                self.recv_next += l as u64;
            }
        } else {
            self.ahead.insert(offset, len);
        }
        let d = pool.copy(data);
        if self.downstream.is_some() {
            if early {
                self.stats.forwarded_early += 1;
            }
            let o = self.map(offset);
            self.enqueue(o, d, Some(offset));
        } else {
            self.held.insert(offset, d);
            while let Some(d) = self.held.remove(&self.base) {
                let up = self.base;
                // Bytes that end here take no room on a next leg this flow may get later.
                let down = self.map(up);
                self.segs.insert(up + d.len() as u64, down);
                self.release_up(up, d.len());
                self.deliver_one(d, deliver);
            }
        }
        Accept::Stored
    }

    /// Messages held for in-order delivery when the flow ended here go on downstream now that
    /// it has one (a last hop that became a relay: see [`Flow::requeue`]).
    fn pass_held(&mut self) {
        while let Some((up, d)) = self.held.pop_first() {
            let o = self.map(up);
            self.enqueue(o, d, Some(up));
        }
    }

    fn deliver_one(&mut self, d: Vec<u8>, deliver: &mut Vec<Vec<u8>>) {
        self.bytes -= d.len();
        self.stats.delivered_bytes += d.len() as u64;
        deliver.push(d);
    }

    /// Upstream bytes `[up, up + len)` left this hop: the window may move.
    fn release_up(&mut self, up: u64, len: usize) {
        if up != self.base {
            self.released.insert(up, len);
            return;
        }
        self.base += len as u64;
        while let Some(l) = self.released.remove(&self.base) {
            self.base += l as u64;
        }
        // Offsets below the base never arrive again (duplicates): their map entries go.
        while self.segs.len() > 1 {
            let mut it = self.segs.keys();
            let (Some(_), Some(&second)) = (it.next(), it.next()) else { break };
            if second > self.base {
                break;
            }
            self.segs.pop_first();
        }
    }

    /// The next hop acknowledged the datagram that carried `offset`: the message leaves the
    /// buffer (its memory is returned for reuse).
    pub fn on_acked(&mut self, offset: u64) -> Option<Vec<u8>> {
        let m = self.msgs.remove(offset)?;
        let len = m.data.len();
        self.bytes -= len;
        if let Some(up) = m.up {
            self.release_up(up, len);
        }
        self.stats.acked_bytes += len as u64;
        Some(m.data)
    }

    /// The datagram that carried `offset` was lost: send it again first.
    pub fn on_lost(&mut self, offset: u64) -> bool {
        match self.msgs.get_mut(offset) {
            Some(m) if m.copies > 0 => {
                m.copies -= 1;
                if m.copies == 0 {
                    self.resend.push_front(offset);
                }
                true
            }
            _ => false,
        }
    }

    /// Queues every message not in flight again, and those held for delivery here (the flow's
    /// downstream changed).
    pub fn requeue(&mut self) {
        self.pass_held();
        self.resend = self.msgs.iter().filter(|(_, m)| m.copies == 0 && m.sent_once).map(|(o, _)| o).collect();
        self.fresh = self.msgs.iter().filter(|(_, m)| !m.sent_once).map(|(o, _)| o).collect();
    }

    /// The first message in line: a resend, else the lowest new one. Stale resend entries
    /// (acked or already resent) are dropped on the way.
    fn front(&mut self) -> Option<(u64, bool)> {
        while let Some(&o) = self.resend.front() {
            if self.msgs.get(o).is_some_and(|m| m.copies == 0) {
                return Some((o, true));
            }
            self.resend.pop_front();
        }
        self.fresh.front().map(|o| (*o, false))
    }

    fn credit_allows(&self, offset: u64, len: usize, unlimited: bool) -> bool {
        unlimited || offset + len as u64 <= self.send_limit
    }

    /// The next message that may be sent now and fits in `room`, marked in flight.
    pub fn next_to_send(&mut self, room: usize, unlimited: bool) -> Option<(u64, &[u8])> {
        let (offset, resent) = self.front()?;
        let i = self.msgs.find(offset).ok()?;
        let len = self.msgs.slots.get(i)?.1.as_ref()?.data.len();
        if len > room || (!resent && !self.credit_allows(offset, len, unlimited)) {
            return None;
        }
        if resent {
            self.resend.pop_front();
            self.stats.retransmitted_bytes += len as u64;
        } else {
            self.fresh.pop_front();
            self.stats.sent_bytes += len as u64;
            self.sent_high = self.sent_high.max(offset + len as u64);
        }
        let m = self.msgs.slots.get_mut(i)?.1.as_mut()?;
        m.copies = 1;
        m.sent_once = true;
        Some((offset, &m.data))
    }

    /// Another copy of an in-flight message whose ack is overdue (a probe), if it fits.
    pub fn probe(&mut self, offset: u64, room: usize) -> Option<&[u8]> {
        let m = self.msgs.get_mut(offset).filter(|m| m.copies > 0 && m.data.len() <= room)?;
        m.copies = m.copies.saturating_add(1);
        self.stats.probed_bytes += m.data.len() as u64;
        Some(&m.data)
    }

    /// Whether something is waiting to be sent (credit aside).
    pub fn has_queued(&self) -> bool {
        !self.resend.is_empty() || !self.fresh.is_empty()
    }

    /// Whether the next message in line may be sent now.
    pub fn can_send(&self, unlimited: bool) -> bool {
        if self.resend.iter().any(|o| self.msgs.get(*o).is_some_and(|m| m.copies == 0)) {
            return true;
        }
        let first = self.fresh.front().and_then(|o| self.msgs.get(*o).map(|m| (*o, m.data.len())));
        first.is_some_and(|(o, len)| self.credit_allows(o, len, unlimited))
    }

    /// The end of what was sent downstream: a credit limit beyond it by more than any buffer
    /// could be is clamped.
    pub fn sent_high(&self) -> u64 {
        self.sent_high
    }

    pub fn stats(&self) -> FlowStats {
        let mut s = self.stats.clone();
        s.buffered = self.bytes;
        s.messages = self.msgs.len();
        s.in_flight_messages = self.msgs.iter().filter(|(_, m)| m.copies > 0).count();
        s.send_limit = self.send_limit;
        s.credit = self.send_limit.saturating_sub(self.sent_high);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(n: u32) -> RouteId {
        RouteId::new(n).unwrap()
    }

    fn relay(capacity: usize) -> Flow {
        let mut f = Flow::new(capacity);
        f.upstream = Some((LinkId(1), rid(1)));
        f.downstream = Some((LinkId(2), rid(2)));
        f
    }

    fn take(f: &mut Flow, pool: &mut BufPool, offset: u64, len: usize) -> Accept {
        let mut out = Vec::new();
        let a = f.accept(offset, &vec![7; len], &mut out, true, pool);
        assert!(out.is_empty(), "a relay delivers nothing here");
        a
    }

    #[test]
    fn a_relay_forwards_past_a_gap_and_the_gap_filler_needs_no_credit_the_others_used() {
        let (mut f, mut pool) = (relay(64 * 1024), BufPool::default());
        // Offsets 1000.. arrive while [0, 1000) is lost on the leg before: passed on at once.
        let mut o = 1000;
        while o + 1000 <= INITIAL_CREDIT_BYTES {
            assert_eq!(take(&mut f, &mut pool, o, 1000), Accept::Stored);
            o += 1000;
        }
        let mut sent = Vec::new();
        while let Some((off, _)) = f.next_to_send(1500, false) {
            sent.push(off);
        }
        assert_eq!(sent.first(), Some(&1000), "sent ahead of the gap");
        assert!(f.stats.forwarded_early > 60);
        // The downstream granted nothing more; the gap filler still goes: its offset is below
        // everything sent, inside the window (a count of sent bytes would have blocked it).
        assert_eq!(take(&mut f, &mut pool, 0, 1000), Accept::Stored);
        assert!(f.can_send(false));
        assert_eq!(f.next_to_send(1500, false).map(|(o, _)| o), Some(0));
        // Duplicates of either are recognised.
        assert_eq!(take(&mut f, &mut pool, 0, 1000), Accept::Duplicate);
        assert_eq!(take(&mut f, &mut pool, 5000, 1000), Accept::Duplicate);
    }

    #[test]
    fn the_window_moves_only_when_the_lowest_bytes_leave() {
        let (mut f, mut pool) = (relay(4000), BufPool::default());
        f.stats.announced_limit = 0;
        assert_eq!(f.limit(), 4000);
        for o in [1000, 2000, 3000] {
            assert_eq!(take(&mut f, &mut pool, o, 1000), Accept::Stored);
        }
        assert_eq!(take(&mut f, &mut pool, 4000, 1000), Accept::OverCredit, "beyond base + capacity");
        while f.next_to_send(1500, true).is_some() {}
        // Acks of later messages free memory but not the window: [0, 1000) is still missing.
        f.on_acked(2000);
        f.on_acked(3000);
        assert_eq!((f.bytes, f.limit()), (1000, 4000));
        assert_eq!(take(&mut f, &mut pool, 0, 1000), Accept::Stored);
        while f.next_to_send(1500, true).is_some() {}
        f.on_acked(0);
        assert_eq!(f.limit(), 5000, "0..1000 left; 1000..2000 is still held");
        f.on_acked(1000);
        assert_eq!(f.limit(), 8000, "the released run above joins the base");
        assert_eq!(f.bytes, 0);
    }

    proptest::proptest! {
        /// The sorted ring of a leg's messages answers as a sorted map would, gap fillers
        /// (offsets below the newest) included.
        #[test]
        fn messages_behave_as_a_sorted_map(ops in proptest::collection::vec((0u8..4, 0u64..2000), 1..200)) {
            let mut ring = Msgs::default();
            let mut model = BTreeMap::new();
            for (op, off) in ops {
                let msg = |o: u64| Msg { data: o.to_be_bytes().to_vec(), copies: 0, sent_once: false, up: None };
                match op {
                    0 | 1 => {
                        ring.insert(off, msg(off));
                        model.insert(off, off);
                    }
                    2 => {
                        let got = ring.remove(off).map(|m| m.data);
                        proptest::prop_assert_eq!(got, model.remove(&off).map(|o: u64| o.to_be_bytes().to_vec()));
                    }
                    _ => proptest::prop_assert_eq!(ring.get(off).is_some(), model.contains_key(&off)),
                }
                proptest::prop_assert_eq!(ring.len(), model.len());
                let keys: Vec<u64> = ring.iter().map(|(o, _)| o).collect();
                proptest::prop_assert_eq!(keys, model.keys().copied().collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn overlapping_messages_are_refused() {
        let (mut f, mut pool) = (relay(64 * 1024), BufPool::default());
        assert_eq!(take(&mut f, &mut pool, 1000, 1000), Accept::Stored);
        assert_eq!(take(&mut f, &mut pool, 1500, 1000), Accept::Overlap);
        assert_eq!(take(&mut f, &mut pool, 500, 1000), Accept::Overlap);
        assert_eq!(take(&mut f, &mut pool, 3000, 0), Accept::Overlap);
        assert_eq!(take(&mut f, &mut pool, u64::MAX - 10, 100), Accept::OverCredit);
        assert_eq!(f.bytes, 1000);
    }

    #[test]
    fn a_message_made_here_takes_its_place_after_what_arrived_and_the_gap_keeps_its_own() {
        let (mut f, mut pool) = (relay(64 * 1024), BufPool::default());
        assert_eq!(take(&mut f, &mut pool, 100, 100), Accept::Stored); // [0, 100) missing
        f.push_local(vec![1; 50]).unwrap(); // after everything received: at 200
        assert_eq!(take(&mut f, &mut pool, 200, 100), Accept::Stored); // shifted by 50
        assert_eq!(take(&mut f, &mut pool, 0, 100), Accept::Stored); // the gap: unshifted
        let mut sent = Vec::new();
        while let Some((off, d)) = f.next_to_send(1500, true) {
            sent.push((off, d.len(), d[0]));
        }
        assert_eq!(sent, vec![(0, 100, 7), (100, 100, 7), (200, 50, 1), (250, 100, 7)]);
    }

    #[test]
    fn where_the_flow_ends_delivery_is_in_order_and_a_later_next_leg_starts_after_it() {
        let (mut f, mut pool) = (Flow::new(64 * 1024), BufPool::default());
        f.upstream = Some((LinkId(1), rid(1)));
        let mut out = Vec::new();
        f.accept(100, &[2; 100], &mut out, true, &mut pool);
        assert!(out.is_empty(), "held until [0, 100) arrives");
        f.accept(0, &[1; 100], &mut out, true, &mut pool);
        assert_eq!(out.iter().map(|d| d[0]).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!((f.bytes, f.limit()), (0, 200 + 64 * 1024));
        // The route grows past this hop: what was delivered here takes no room downstream.
        f.downstream = Some((LinkId(2), rid(2)));
        f.requeue();
        f.accept(200, &[3; 10], &mut out, true, &mut pool);
        assert_eq!(f.next_to_send(1500, true).map(|(o, d)| (o, d[0])), Some((0, 3)));
    }
}
