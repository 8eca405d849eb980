//! Anchors: the seed's "choose reliable backbone nodes as termination points and proxy through
//! them over short-term routes". A mobile node ends its session at an anchor on the backbone;
//! the anchor holds a second, long-lived session to the real destination and pipes the stream
//! and datagrams between the two. The mobile side's short routes come and go under the first
//! session; the destination's session (over stable backbone routes) never notices.
//!
//! The anchor is application-level piping over the public host API: feed it the anchor
//! host's session events and call [`Anchor::flush`] after the host's timers run.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use crate::identity::PublicKey;
use crate::link::Endpoint;
use crate::session::{SessionEvent, SessionId};

use super::Host;

/// Most bytes held per direction while the other session has no room (then the mobile side's
/// own flow control takes over: it gets no confirmations until room frees).
const MAX_HELD: usize = 8 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
/// What an anchor relayed.
pub struct AnchorStats {
    /// Sessions it relayed for.
    pub sessions_anchored: u64,
    /// Stream bytes passed between the two sessions.
    pub stream_bytes_relayed: u64,
    /// Datagrams passed between the two sessions.
    pub datagrams_relayed: u64,
    /// Datagrams dropped because the other session could not send them.
    pub datagrams_dropped: u64,
    /// Stream bytes dropped because a direction held more than its limit.
    pub bytes_dropped: u64,
}

/// A backbone anchor: joins a mobile node's session to a session towards a fixed target, so
/// the far end sees one session whatever the mobile side goes through.
pub struct Anchor {
    target: PublicKey,
    /// Budget for relayed datagrams (the original budget is not known here).
    datagram_budget: Duration,
    peer_of: BTreeMap<SessionId, SessionId>,
    held: BTreeMap<SessionId, VecDeque<u8>>,
    /// What it relayed.
    pub stats: AnchorStats,
}

impl Anchor {
    /// An anchor that proxies every session it accepts to `target`.
    pub fn new(target: PublicKey, datagram_budget: Duration) -> Self {
        Anchor {
            target,
            datagram_budget,
            peer_of: BTreeMap::new(),
            held: BTreeMap::new(),
            stats: AnchorStats::default(),
        }
    }

    /// The same anchor after a crash: same target, no sessions, nothing held.
    pub fn restarted(&self) -> Self {
        Anchor::new(self.target, self.datagram_budget)
    }

    /// The upstream session paired with a mobile one, and the other way round.
    pub fn paired(&self, session: SessionId) -> Option<SessionId> {
        self.peer_of.get(&session).copied()
    }

    /// Handles a session event of the anchor node; returns events that are not the anchor's.
    pub fn handle<A: Endpoint>(
        &mut self,
        now: Instant,
        host: &mut Host<A>,
        event: SessionEvent,
    ) -> Option<SessionEvent> {
        match event {
            SessionEvent::Accepted { session, peer } if peer != self.target => {
                match host.connect(now, self.target, None) {
                    Ok(up) => {
                        self.peer_of.insert(session, up);
                        self.peer_of.insert(up, session);
                        self.stats.sessions_anchored += 1;
                    }
                    Err(_) => host.close(now, session),
                }
                None
            }
            SessionEvent::Stream { session, data, .. } if self.peer_of.contains_key(&session) => {
                let other = self.peer_of[&session];
                let q = self.held.entry(other).or_default();
                if q.len() + data.len() > MAX_HELD {
                    self.stats.bytes_dropped += data.len() as u64;
                } else {
                    q.extend(&data);
                }
                self.flush(now, host);
                None
            }
            SessionEvent::Datagram { session, data } if self.peer_of.contains_key(&session) => {
                let other = self.peer_of[&session];
                match host.send_datagram(now, other, &data, self.datagram_budget) {
                    Ok(true) => self.stats.datagrams_relayed += 1,
                    _ => self.stats.datagrams_dropped += 1,
                }
                None
            }
            SessionEvent::Failed { session } | SessionEvent::Closed { session }
                if self.peer_of.contains_key(&session) =>
            {
                // One side is gone for good: so is the other.
                let Some(other) = self.peer_of.remove(&session) else { return None };
                self.peer_of.remove(&other);
                self.held.remove(&session);
                self.held.remove(&other);
                host.close(now, other);
                None
            }
            SessionEvent::Established { session, .. } | SessionEvent::PathUp { session, .. }
                if self.peer_of.contains_key(&session) =>
            {
                self.flush(now, host);
                None
            }
            SessionEvent::PathDown { session, .. } | SessionEvent::PeerRestarted { session, .. }
                if self.peer_of.contains_key(&session) =>
            {
                None
            }
            other => Some(other),
        }
    }

    /// Writes held bytes into sessions that have room now.
    pub fn flush<A: Endpoint>(&mut self, now: Instant, host: &mut Host<A>) {
        for (sid, q) in self.held.iter_mut() {
            while !q.is_empty() {
                let (a, _) = q.as_slices();
                let n = host.stream_write(now, *sid, a).unwrap_or(0);
                if n == 0 {
                    break;
                }
                q.drain(..n);
                self.stats.stream_bytes_relayed += n as u64;
            }
        }
    }
}
