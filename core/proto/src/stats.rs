//! Counters: what each link carried and what it refused, by reason.

use std::time::{Duration, Instant};

use crate::wire::DecodeError;

/// Why an input was refused. Every refusal is counted; none panics or disturbs other flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    /// Shorter than its header or its declared length.
    Truncated,
    /// Longer than any valid packet.
    Oversized,
    /// A protocol version we do not speak.
    BadVersion,
    /// A packet or frame type we do not know.
    UnknownType,
    /// A field out of range or an inconsistent length.
    Malformed,
    /// A data packet for a link index we do not have.
    UnknownIndex,
    /// Authentication failed: forged, corrupted, or sealed with a wrong key.
    Decrypt,
    /// A counter seen already, or older than the replay window.
    Replayed,
    /// Sealed under a key epoch we no longer (or not yet) hold.
    StaleKey,
    /// A handshake message that did not authenticate or came at the wrong time.
    Handshake,
    /// A route frame for a route id we do not have (or not on this link).
    UnknownRoute,
    /// A route message that failed end-to-end authentication or was malformed inside.
    BadRouteMessage,
    /// Dropped because a queue was full.
    QueueFull,
    /// An ack naming datagrams never sent (or already settled).
    UnknownAck,
    /// A route message beyond the credit this node granted (the sender ignored backpressure).
    OverCredit,
    /// A credit update larger than any buffer (clamped).
    CreditTooLarge,
    /// A handshake init whose `mac1` does not fit this node (junk, or meant for another key).
    BadMac,
    /// A handshake init answered with a cookie reply instead (the node is under load and the
    /// sender has not proved its address yet).
    Cookie,
    /// A handshake init over its source host's or the node's handshake rate.
    RateLimited,
    /// A handshake init not newer than the last one taken from that key (a replay).
    StaleInit,
    /// A link made by a stranger's init, forgotten before it came up (too many half-open).
    HalfOpen,
    /// A route setup refused: the neighbour holds its share of the route table or buffers.
    RouteShare,
    /// A route setup refused: the neighbour asks for more than its setup rate.
    RouteRate,
    /// A route setup refused: the node's route table or buffer budget is full.
    TableFull,
    /// A session refused: the neighbour it came through holds its share of sessions.
    SessionShare,
    /// A DHT request dropped: the contact asks more than its request rate.
    DhtRate,
}

impl Reject {
    /// Every reason, in the order status reports them.
    pub const ALL: [Reject; 26] = [
        Reject::Truncated,
        Reject::Oversized,
        Reject::BadVersion,
        Reject::UnknownType,
        Reject::Malformed,
        Reject::UnknownIndex,
        Reject::Decrypt,
        Reject::Replayed,
        Reject::StaleKey,
        Reject::Handshake,
        Reject::UnknownRoute,
        Reject::BadRouteMessage,
        Reject::QueueFull,
        Reject::UnknownAck,
        Reject::OverCredit,
        Reject::CreditTooLarge,
        Reject::BadMac,
        Reject::Cookie,
        Reject::RateLimited,
        Reject::StaleInit,
        Reject::HalfOpen,
        Reject::RouteShare,
        Reject::RouteRate,
        Reject::TableFull,
        Reject::SessionShare,
        Reject::DhtRate,
    ];

    /// The reason's stable name (status JSON keys).
    pub fn name(self) -> &'static str {
        match self {
            Reject::Truncated => "truncated",
            Reject::Oversized => "oversized",
            Reject::BadVersion => "bad_version",
            Reject::UnknownType => "unknown_type",
            Reject::Malformed => "malformed",
            Reject::UnknownIndex => "unknown_index",
            Reject::Decrypt => "decrypt",
            Reject::Replayed => "replayed",
            Reject::StaleKey => "stale_key",
            Reject::Handshake => "handshake",
            Reject::UnknownRoute => "unknown_route",
            Reject::BadRouteMessage => "bad_route_message",
            Reject::QueueFull => "queue_full",
            Reject::UnknownAck => "unknown_ack",
            Reject::OverCredit => "over_credit",
            Reject::CreditTooLarge => "credit_too_large",
            Reject::BadMac => "bad_mac",
            Reject::Cookie => "cookie",
            Reject::RateLimited => "rate_limited",
            Reject::StaleInit => "stale_init",
            Reject::HalfOpen => "half_open",
            Reject::RouteShare => "route_share",
            Reject::RouteRate => "route_rate",
            Reject::TableFull => "table_full",
            Reject::SessionShare => "session_share",
            Reject::DhtRate => "dht_rate",
        }
    }
}

impl From<DecodeError> for Reject {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Truncated => Reject::Truncated,
            DecodeError::Oversized => Reject::Oversized,
            DecodeError::BadVersion(_) => Reject::BadVersion,
            DecodeError::UnknownType(_) => Reject::UnknownType,
            DecodeError::Malformed(_) => Reject::Malformed,
        }
    }
}

/// Counts of refused inputs by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RejectCounts([u64; Reject::ALL.len()]);

impl RejectCounts {
    /// Counts one refusal.
    pub fn add(&mut self, r: Reject) {
        self.0[r as usize] += 1;
    }
    /// Refusals for `r`.
    pub fn get(&self, r: Reject) -> u64 {
        self.0[r as usize]
    }
    /// Refusals for every reason.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    /// Non-zero counters, by reason.
    pub fn iter(&self) -> impl Iterator<Item = (Reject, u64)> + '_ {
        Reject::ALL.iter().map(|r| (*r, self.get(*r))).filter(|(_, n)| *n > 0)
    }
}

/// Packets sent and key changes over the last minute, in one-second buckets, read without a
/// timer (an idle node must not wake up to keep statistics): each count lands in the bucket
/// of its second, and a read sums the buckets of the last 60 seconds.
#[derive(Debug, Clone, Default)]
pub struct LastMinute {
    base: Option<Instant>,
    /// (second since `base`, packets, key changes), at `second % 60`.
    buckets: Vec<(u64, u32, u32)>,
}

impl LastMinute {
    fn bucket(&mut self, now: Instant) -> &mut (u64, u32, u32) {
        let base = *self.base.get_or_insert(now);
        if self.buckets.is_empty() {
            self.buckets = vec![(u64::MAX, 0, 0); 60];
        }
        let sec = now.saturating_duration_since(base).as_secs();
        let b = &mut self.buckets[(sec % 60) as usize];
        if b.0 != sec {
            *b = (sec, 0, 0);
        }
        b
    }

    /// One packet sent at `now`.
    pub fn packet(&mut self, now: Instant) {
        let b = self.bucket(now);
        b.1 = b.1.saturating_add(1);
    }

    /// One key change (rotation or handshake) at `now`.
    pub fn rekey(&mut self, now: Instant) {
        let b = self.bucket(now);
        b.2 = b.2.saturating_add(1);
    }

    /// (packets, key changes) in the 60 seconds up to `now`.
    pub fn read(&self, now: Instant) -> (u64, u64) {
        let Some(base) = self.base else { return (0, 0) };
        let sec = now.saturating_duration_since(base).as_secs();
        self.buckets
            .iter()
            .filter(|b| b.0 != u64::MAX && b.0 <= sec && sec - b.0 < 60)
            .fold((0, 0), |(p, r), b| (p + b.1 as u64, r + b.2 as u64))
    }
}

/// Per-link counters.
#[derive(Debug, Clone, Default)]
pub struct LinkStats {
    /// Packets sent on the link.
    pub tx_packets: u64,
    /// Bytes sent on the link (link packets, transport framing excluded).
    pub tx_bytes: u64,
    /// Packets received and authenticated.
    pub rx_packets: u64,
    /// Bytes received and authenticated.
    pub rx_bytes: u64,
    /// Completed key rotations (both sides count each one).
    pub rekeys: u64,
    /// Completed handshakes.
    pub handshakes: u64,
    /// Cookie replies the peer sent us (it was under handshake load).
    pub cookies: u64,
    /// Round trip measured by the last rekey or handshake exchange.
    pub rtt: Option<Duration>,
    /// Packets sent and key changes (rotations, handshakes) over the last minute.
    pub last_minute: LastMinute,
    /// Keepalives sent (only where configured).
    pub keepalives: u64,
    /// Packets refused, by reason.
    pub rejected: RejectCounts,
}

impl RejectCounts {
    /// Counts `n` refusals for `r`.
    pub fn add_n(&mut self, r: Reject, n: u64) {
        self.0[r as usize] += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_minute_counts_the_last_sixty_seconds_only() {
        let t0 = Instant::now(); // test-only clock
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut m = LastMinute::default();
        assert_eq!(m.read(t0), (0, 0));
        for s in 0..30 {
            m.packet(at(s));
        }
        m.rekey(at(10));
        assert_eq!(m.read(at(29)), (30, 1));
        assert_eq!(m.read(at(69)), (20, 1), "seconds 0-9 have left the window");
        assert_eq!(m.read(at(70)), (19, 0), "and second 10 with its rekey");
        // A bucket reused a minute later starts from zero.
        m.packet(at(75));
        assert_eq!(m.read(at(75)), (15, 0));
        assert_eq!(m.read(at(600)), (0, 0), "ten quiet minutes read as nothing");
    }
}
