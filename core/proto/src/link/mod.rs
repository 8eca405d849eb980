//! One encrypted link to one neighbour: handshake, per-direction keys, rekeying, replay window,
//! padding, keepalive and dead-peer detection. Sans-IO: fed packets and `now`, it returns
//! packets to send and the next deadline.
//!
//! Quiet when idle (a phone's radio wakes for every packet): a link that carries nothing sends
//! nothing and asks for no timer. Keys rotate only while traffic flows, keepalives go out only
//! where configured ([`LinkConfig::keepalive`], for NAT bindings), and dead-peer detection is on
//! demand: a link is declared dead when something it sent that asks for an answer (data, a
//! rekey, a probe, a handshake) stays unanswered for [`LinkConfig::dead_after`], never for
//! merely being silent.
//!
//! Rekeying (seed: "link layer encryption"): the side that initiated the handshake starts a
//! rekey [`LinkConfig::rekey_interval`] after the last one once the link has carried traffic
//! since (or after [`LinkConfig::rekey_after_packets`]): the first packet after an idle spell
//! goes out under the current key and starts the rotation, as WireGuard's REKEY_AFTER_TIME
//! applies on send. A key older than [`LinkConfig::key_max_age`] is never used to send: the link
//! handshakes again first. The rekey sends a fresh ephemeral key inside the link; the peer
//! answers with its own; both derive
//! `ck', k_send', k_recv' = HKDF(ck, ECDH(e_a, e_b))`, so each key is hashed with the previous
//! chain. The initiator switches its sending key when the answer arrives (the peer confirmed);
//! the answering side switches when the first packet under the new key arrives. The previous
//! receive key (and its replay window) stays valid for [`LinkConfig::old_key_grace`].

pub mod cookie;
pub mod queue;

use std::time::{Duration, Instant};

use rand_core::CryptoRngCore;

use crate::crypto::replay::ReplayWindow;
use crate::crypto::{AeadKey, Ephemeral, Secret32, TAG_LEN};
use crate::frame::Frame;
use crate::identity::{PublicKey, SecretKey, PUBLIC_KEY_LEN};
use crate::noise::{self as handshake, Clock, EpochKeys, Initiator, Responded, Timestamp};
use crate::stats::{LinkStats, Reject};
use crate::types::copies_for_even_chance;
pub(crate) use crate::types::RngRef;
pub use crate::types::{Endpoint, Interface, LinkId};
use crate::wire::{CookieReply, DataHeader, HandshakeResp, DATA_HEADER_LEN, INIT_MAC1_AT};
use queue::FrameQueue;

/// Chance that a live peer behind a lossy link left every one of our packets unanswered,
/// below which dead-peer detection gives up on it.
const DEAD_CHANCE: f64 = 1e-4;
/// How much longer than `dead_after` a lossy link may stay silent while too few packets went
/// out to judge it.
const DEAD_STRETCH: u32 = 30;
/// z² of the Wilson bound on a link's loss (z = 1.5: a one-sided 93% bound).
const WILSON_Z2: f64 = 2.25;
/// Most quick handshake retries (before the backoff) for a link that was up.
const MAX_QUICK_HANDSHAKES: u32 = 1000;
/// Most copies of one handshake message sent at once on a lossy link.
pub const MAX_HANDSHAKE_COPIES: u32 = 16;
/// Shortest gap between dead-peer probes.
const MIN_PROBE_GAP: Duration = Duration::from_millis(50);
/// The most round-trip loss dead-peer detection allows for (beyond it, a link is as good as
/// dead).
const MAX_ROUND_TRIP_LOSS: f64 = 0.995;

/// Stop using a key well before its 64-bit counter could wrap.
pub const REJECT_AFTER_PACKETS: u64 = 1 << 60;

/// Link timing and framing settings.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Key rotation period while the link carries traffic. The seed: "once a second or twice
    /// the round trip". A link that carried nothing since its last rotation does not rotate.
    pub rekey_interval: Duration,
    /// Rotate earlier after this many packets under one key.
    pub rekey_after_packets: u64,
    /// Hard limit: a key older than this never sends (not even a keepalive); the link
    /// handshakes again before its next packet (WireGuard's REJECT_AFTER_TIME is 180 s).
    pub key_max_age: Duration,
    /// How long the previous receive key is still accepted after a rotation.
    pub old_key_grace: Duration,
    /// Resend an unanswered rekey after this long.
    pub rekey_retry: Duration,
    /// Send a keepalive (a PING, which asks for no answer) when nothing was sent for this
    /// long; `None`: never. For NAT bindings only: liveness does not depend on it.
    pub keepalive: Option<Duration>,
    /// Declare the peer dead when a packet that asks for an answer (data, rekey, probe,
    /// handshake) stays unanswered this long: nothing authenticated arrives after it.
    pub dead_after: Duration,
    /// First handshake retry delay; doubles up to `handshake_retry_max`.
    pub handshake_retry: Duration,
    /// Longest handshake retry delay (the doubling's cap).
    pub handshake_retry_max: Duration,
    /// Pad plaintext to a multiple of this (16 or 32).
    pub pad_to: usize,
    /// Largest datagram this link sends.
    pub mtu: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            rekey_interval: Duration::from_secs(1),
            // At 1 Gb/s of 1400-byte packets this is about 12 s: time decides on real links.
            rekey_after_packets: 1 << 20,
            key_max_age: Duration::from_secs(120),
            old_key_grace: Duration::from_secs(2),
            rekey_retry: Duration::from_millis(300),
            // Off: every packet wakes a phone's radio. A node behind NAT whose peers must reach
            // it while idle sets 25 s (WireGuard's PersistentKeepalive).
            keepalive: None,
            // Retransmissions (every RTO, at most 4 s apart) keep asking meanwhile, so even a
            // very lossy link gets many chances to answer before it is declared dead.
            dead_after: Duration::from_secs(4),
            handshake_retry: Duration::from_millis(500),
            handshake_retry_max: Duration::from_secs(8),
            pad_to: 16,
            // Fits a 1500-byte Ethernet MTU under IPv6 + UDP (1452 bytes of payload), and
            // 1440 - 32 bytes of header and tag leaves a multiple of 16 and 32: no padding
            // is wasted on full packets.
            mtu: 1440,
        }
    }
}

impl LinkConfig {
    /// Largest plaintext (frames + padding) one packet carries.
    pub fn max_plaintext(&self) -> usize {
        let raw = self.mtu.saturating_sub(DATA_HEADER_LEN + TAG_LEN);
        raw - raw % self.pad_to.max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// Where a link is in its life.
pub enum LinkState {
    /// Handshaking (dialled, or answered and waiting for confirmation).
    Connecting,
    /// Keys agreed: packets flow.
    Up,
    /// Gone (see [`DownReason`]).
    Down,
}

/// Why a link went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// Nothing authenticated arrived for `dead_after`.
    Timeout,
    /// The peer sent a close.
    PeerClosed,
    /// Closed locally.
    Closed,
    /// The local interface it lived on went away.
    InterfaceGone,
}

/// What a link tells the node after an input or timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// The link came up (handshake done).
    Up,
    /// A new session replaced the previous one while up (the peer restarted): datagram
    /// counters start again, so per-link delivery state must too.
    Reset,
    /// The link went down, and why.
    Down(DownReason),
}

struct KeyEpoch {
    id: u8,
    send: AeadKey,
    /// Counters run on across epochs (one datagram numbering per session, which the per-hop
    /// acks use); each key still sees each counter at most once.
    send_counter: u64,
    first_counter: u64,
    recv_count: u64,
    recv: AeadKey,
    replay: ReplayWindow,
    chain: Secret32,
    started: Instant,
}

impl KeyEpoch {
    fn new(id: u8, keys: EpochKeys, now: Instant, first_counter: u64) -> Self {
        KeyEpoch {
            id,
            send: AeadKey::new(&keys.send),
            send_counter: first_counter,
            first_counter,
            recv_count: 0,
            recv: AeadKey::new(&keys.recv),
            replay: ReplayWindow::default(),
            chain: keys.chain,
            started: now,
        }
    }
}

struct PendingRekey {
    epoch: u8,
    e: Ephemeral,
    e_pub: [u8; PUBLIC_KEY_LEN],
    sent: Instant,
}

/// Keys agreed by one handshake, with their rotations.
struct Session {
    local_index: u32,
    remote_index: u32,
    /// We started this session's handshake, so we drive its rekeys.
    initiator: bool,
    cur: KeyEpoch,
    prev: Option<(KeyEpoch, Instant)>,
    /// Answering side: the next epoch, accepted for receiving, used for sending once confirmed.
    next: Option<(KeyEpoch, [u8; PUBLIC_KEY_LEN])>,
    rekey: Option<PendingRekey>,
    /// One past the highest counter received (counters run on across key epochs).
    rx_top: u64,
    /// Initiating side: the peer has sent under `cur` since we switched to it. Until then the
    /// previous key stays valid for receiving whatever the grace period: on a very lossy link
    /// our confirmation may take many tries to arrive, and the peer keeps sending under the
    /// old key meanwhile (refusing those packets would leave nothing to answer, and both ends
    /// would wait for each other).
    peer_on_cur: bool,
}

struct OutgoingHandshake {
    state: Initiator,
    sent: Instant,
    /// The init as sent (a cookie reply makes us send it again with `mac2`).
    packet: Vec<u8>,
    /// Sent again with a cookie already: a second reply waits for the next try.
    cookie_resent: bool,
}

/// One neighbour.
pub struct Link<A> {
    /// The node's id for the link.
    pub id: LinkId,
    /// The neighbour's static key.
    pub peer: PublicKey,
    /// The neighbour's transport address now (links follow their peer).
    pub addr: A,
    /// The link's slot: the initiator's interface, sent in every handshake of this link.
    pub slot: u8,
    config: LinkConfig,
    /// We dial this peer (static peer): retry handshakes when down.
    dial: bool,
    /// The interface the link lives on is gone: no handshakes until it is back.
    parked: bool,
    state: LinkState,
    session: Option<Session>,
    /// A responder-side session waiting for the initiator's first packet.
    pending: Option<Session>,
    handshake: Option<OutgoingHandshake>,
    handshake_attempts: u32,
    /// Handshake inits sent since the last session, copies included.
    handshake_sends: u32,
    next_handshake: Option<Instant>,
    /// A packet that goes out before anything else: a handshake message or a final close.
    handshake_out: Option<Vec<u8>>,
    /// Further copies of `handshake_out` to send (a handshake on a lossy link: each copy of an
    /// init that arrives is answered, so copies multiply the chance of a round trip).
    urgent_copies: u32,
    control: FrameQueue,
    last_recv: Instant,
    last_send: Instant,
    retired: Vec<u32>,
    /// The peer's counter passed `rekey_after_packets`: rotate at the next chance.
    force_rekey: bool,
    /// Traffic (anything but link control) went either way since the last rotation: the
    /// initiator rotates `rekey_interval` after it.
    traffic_since_rekey: bool,
    /// Since when a packet we sent that asks for an answer is unanswered (nothing
    /// authenticated arrived after it): on-demand dead-peer detection.
    unanswered_since: Option<Instant>,
    /// Packets that ask for an answer sent since `unanswered_since`.
    unanswered_sends: u32,
    /// This link's datagrams acknowledged and lost (either way), as the node counts them: how
    /// much silence a live peer can explain.
    outcomes: (u64, u64),
    /// `outcomes` when the current silence began: the evidence dead-peer detection weighs
    /// (the datagrams lost since are the silence itself, not the link's loss).
    outcomes_before: (u64, u64),
    /// How many inits (copies included) the last handshake we started took (each but the last
    /// counts as a lost round trip).
    handshake_tries: u32,
    /// A queued control frame asks for an answer (REKEY, PROBE): the packet that carries it
    /// starts `unanswered_since`.
    control_elicits: bool,
    /// Length of the packet being built after its link control frames (see `begin_packet`).
    control_end: usize,
    /// Initiator of the current session, not yet heard from under it: its key confirmation
    /// (a PROBE) is repeated every `rekey_retry` until the responder answers, as a lossy link
    /// may lose it (the responder sends nothing before it).
    confirm_sent: Option<Instant>,
    /// The last handshake init we answered and our answer, so a duplicated copy of it gets the
    /// same answer instead of replacing the session.
    answered: Option<(Vec<u8>, Vec<u8>)>,
    /// The last packet opened was the newest the peer has sent so far (not a late one that
    /// took a slower way): only such a packet may move the link to its source address.
    pub(crate) last_was_newest: bool,
    /// Where this side's init timestamps come from.
    clock: Clock,
    /// The cookie the peer gave us under load, and when.
    cookie: Option<(cookie::Cookie, Instant)>,
    /// The newest init timestamp we accepted from the peer: an up link refuses older ones
    /// (a replayed init), as WireGuard does with TAI64N.
    last_init_ts: Option<Timestamp>,
    /// Counters.
    pub stats: LinkStats,
}

/// The link's deadlines, one slot each (derived from state, see [`Link::deadline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Retry the handshake.
    Handshake,
    /// Repeat the key confirmation until the responder answers.
    Confirm,
    /// Rotate the keys (every second while traffic flows).
    Rekey,
    /// Send a keepalive (only where configured).
    Keepalive,
    /// Declare the peer dead (something that asked for an answer got none).
    Dead,
    /// The key reached its hard age limit: handshake again.
    OldKey,
}

impl Timer {
    /// Every timer.
    pub const ALL: [Timer; 6] =
        [Timer::Handshake, Timer::Confirm, Timer::Rekey, Timer::Keepalive, Timer::Dead, Timer::OldKey];
}

impl<A: Clone> Link<A> {
    /// A link to `peer` at `addr` on local `slot`; `dial`: start the handshake now.
    pub fn new(id: LinkId, peer: PublicKey, addr: A, slot: u8, config: LinkConfig, dial: bool, now: Instant) -> Self {
        Link {
            id,
            peer,
            addr,
            slot,
            config,
            dial,
            parked: false,
            state: if dial { LinkState::Connecting } else { LinkState::Down },
            session: None,
            pending: None,
            handshake: None,
            handshake_attempts: 0,
            handshake_sends: 0,
            next_handshake: dial.then_some(now),
            handshake_out: None,
            urgent_copies: 0,
            control: FrameQueue::default(),
            last_recv: now,
            last_send: now,
            retired: Vec::new(),
            force_rekey: false,
            traffic_since_rekey: false,
            unanswered_since: None,
            unanswered_sends: 0,
            outcomes: (0, 0),
            outcomes_before: (0, 0),
            handshake_tries: 0,
            control_elicits: false,
            control_end: 0,
            confirm_sent: None,
            answered: None,
            last_was_newest: false,
            clock: Clock::new(0, now),
            cookie: None,
            last_init_ts: None,
            stats: LinkStats::default(),
        }
    }

    /// Where the link is in its life.
    pub fn state(&self) -> LinkState {
        self.state
    }

    /// Whether keys are agreed and packets flow.
    pub fn is_up(&self) -> bool {
        self.state == LinkState::Up
    }

    /// The link's settings.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Current key epoch (for tests and status).
    pub fn epoch(&self) -> Option<u8> {
        self.session.as_ref().map(|s| s.cur.id)
    }

    /// Local indexes of sessions dropped since the last call (the node unmaps them).
    pub fn take_retired(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.retired)
    }

    /// Starts (or restarts) a handshake as initiator. The node picks `local_index`.
    pub fn start_handshake(&mut self, now: Instant, rng: &mut dyn CryptoRngCore, local: &SecretKey, local_index: u32) {
        if let Some(old) = self.handshake.take() {
            self.retired.push(old.state.sender_index);
        }
        let ts = self.clock.at(now);
        let (state, mut pkt) = handshake::initiate(
            handshake::LINK_PROLOGUE,
            &mut RngRef(rng),
            local,
            &self.peer,
            local_index,
            self.slot,
            ts,
        );
        let cookie = self.cookie.filter(|(_, at)| now.saturating_duration_since(*at) < cookie::COOKIE_LIFETIME);
        cookie::seal_macs(&mut pkt, &self.peer, cookie.as_ref().map(|(c, _)| c));
        self.handshake = Some(OutgoingHandshake { state, sent: now, packet: pkt.clone(), cookie_resent: false });
        self.handshake_attempts += 1;
        let copies = self.handshake_copies();
        self.handshake_sends = self.handshake_sends.saturating_add(copies);
        self.handshake_out = Some(pkt);
        self.urgent_copies = copies - 1;
        if self.state == LinkState::Down {
            self.state = LinkState::Connecting;
        }
        if self.state == LinkState::Up {
            // A new session under an up link (its key grew too old): an unanswered handshake
            // means the peer is gone, like unanswered data.
            for _ in 0..copies {
                self.unanswered_send(now);
            }
        }
    }

    /// Completes our handshake with the peer's response.
    pub fn on_handshake_resp(
        &mut self,
        now: Instant,
        local: &SecretKey,
        resp: &HandshakeResp<'_>,
    ) -> Result<Option<LinkEvent>, Reject> {
        let Some(hs) = self.handshake.take() else { return Err(Reject::Handshake) };
        if hs.state.sender_index != resp.receiver_index {
            self.handshake = Some(hs);
            return Err(Reject::Handshake);
        }
        let sent = hs.sent;
        let keys = match hs.state.finish(local, resp) {
            Ok(k) => k,
            Err(_) => {
                // Keep waiting: a forged response must not kill a real handshake in flight.
                return Err(Reject::Handshake);
            }
        };
        let session = Session {
            local_index: resp.receiver_index,
            remote_index: resp.sender_index,
            initiator: true,
            cur: KeyEpoch::new(0, keys, now, 0),
            prev: None,
            next: None,
            rekey: None,
            rx_top: 0,
            peer_on_cur: true,
        };
        let replaced = self.session.is_some();
        self.install(session, now);
        self.stats.rtt = Some(now.saturating_duration_since(sent));
        // Key confirmation: the responder starts sending once it sees a packet under these keys.
        // A probe, so the responder's ack tells us it arrived; repeated until then.
        self.push_control(Frame::Probe);
        self.confirm_sent = Some(now);
        Ok(self.mark_up().or(replaced.then_some(LinkEvent::Reset)))
    }

    /// Sets where this side's handshake timestamps come from (the node's clock).
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// The peer, under load, asks us to prove our address: keep its cookie and send the init
    /// in flight again with it (once per init; later tries carry it too).
    pub fn on_cookie_reply(&mut self, now: Instant, reply: &CookieReply<'_>) -> Result<(), Reject> {
        let Some(hs) = self.handshake.as_mut().filter(|h| h.state.sender_index == reply.receiver_index) else {
            return Err(Reject::Handshake);
        };
        let mac1 = cookie::mac1_of(&hs.packet).ok_or(Reject::Handshake)?;
        let c = cookie::open_reply(&self.peer, &mac1, reply).ok_or(Reject::Decrypt)?;
        self.cookie = Some((c, now));
        self.stats.cookies += 1;
        if !hs.cookie_resent {
            hs.cookie_resent = true;
            cookie::seal_macs(&mut hs.packet, &self.peer, Some(&c));
            self.handshake_out = Some(hs.packet.clone());
            self.urgent_copies = 0;
        }
        Ok(())
    }

    /// Whether an init with timestamp `ts` may be taken: not older than the last one taken
    /// while the link is up (a replay). A link that is down takes any, so a peer whose clock
    /// went back after a restart can still come back.
    pub fn init_is_fresh(&self, ts: &Timestamp) -> bool {
        self.state != LinkState::Up || self.last_init_ts.is_none_or(|t| *ts > t)
    }

    /// An init older than the last one taken came while the link is up: a replay, or the peer
    /// restarted with a clock that went back. Ask the peer for an answer under the current
    /// keys (unless something already waits for one): a live peer answers and nothing
    /// changes; a restarted one cannot, so the link goes down within `dead_after` and its
    /// next init is taken.
    pub fn stale_init(&mut self) {
        if self.state == LinkState::Up && self.unanswered_since.is_none() && !self.control_elicits {
            self.push_control(Frame::Probe);
        }
    }

    /// Accepts a handshake the peer initiated (already verified by [`handshake::respond`]).
    /// Returns false when we keep our own crossing handshake instead (tie-break on keys).
    pub fn on_handshake_init(
        &mut self,
        now: Instant,
        local: &SecretKey,
        init: &[u8],
        responded: Responded,
        local_index: u32,
    ) -> bool {
        if self.handshake.is_some() && local.public_key() < self.peer {
            // Both sides dialled at once: the smaller key's handshake wins.
            return false;
        }
        if let Some(old) = self.handshake.take() {
            self.retired.push(old.state.sender_index);
        }
        let session = Session {
            local_index,
            remote_index: responded.initiator_index,
            initiator: false,
            cur: KeyEpoch::new(0, responded.keys, now, 0),
            prev: None,
            next: None,
            rekey: None,
            rx_top: 0,
            peer_on_cur: true,
        };
        if let Some(old) = self.pending.replace(session) {
            self.retired.push(old.local_index);
        }
        self.last_init_ts = self.last_init_ts.max(Some(responded.timestamp));
        self.answered = Some((init[..INIT_MAC1_AT.min(init.len())].to_vec(), responded.packet.clone()));
        self.handshake_out = Some(responded.packet);
        self.urgent_copies = 0;
        true
    }

    /// The answer just queued goes out in as many copies as this link's loss needs, if the
    /// peer is one we know (the link is or was up). The node asks only for an init that came
    /// from the link's own address: an init replayed from anywhere else gets one answer, no
    /// larger than itself.
    pub fn answer_in_copies(&mut self) {
        let known = self.state == LinkState::Up || self.stats.handshakes > 0;
        if known && self.handshake_out.is_some() {
            self.urgent_copies = self.copies_for_loss() - 1;
        }
    }

    /// If `init` is the init we answered last (byte for byte up to its MACs, which a cookie
    /// changes) and its sender has not yet confirmed our answer, queue the same answer again.
    pub fn answer_again(&mut self, init: &[u8]) -> bool {
        if self.pending.is_none() {
            return false;
        }
        let Some(head) = init.get(..INIT_MAC1_AT) else { return false };
        match &self.answered {
            Some((i, resp)) if bool::from(subtle::ConstantTimeEq::ct_eq(&i[..], head)) => {
                self.handshake_out = Some(resp.clone());
                true
            }
            _ => false,
        }
    }

    /// The ephemeral key of the last init we answered (the node finds the link by it).
    pub(crate) fn answered_key(&self) -> Option<[u8; PUBLIC_KEY_LEN]> {
        let (init, _) = self.answered.as_ref()?;
        init.get(8..8 + PUBLIC_KEY_LEN)?.try_into().ok()
    }

    fn install(&mut self, session: Session, now: Instant) {
        if let Some(old) = self.session.replace(session) {
            self.retired.push(old.local_index);
        }
        // Queued link frames (a rekey, its answer, a probe) belong to the old session's key
        // chain: sent under the new one, a late answer to an old rekey would match a new
        // rekey's epoch and leave the two ends on different keys.
        self.control.clear();
        self.control_elicits = false;
        if let Some(p) = self.pending.take() {
            self.retired.push(p.local_index);
        }
        self.stats.handshakes += 1;
        self.stats.last_minute.rekey(now);
        self.handshake_tries = self.handshake_sends;
        self.handshake_attempts = 0;
        self.handshake_sends = 0;
        self.next_handshake = None;
        self.last_recv = now;
        self.answered_now();
        self.force_rekey = false;
        self.traffic_since_rekey = false;
    }

    fn mark_up(&mut self) -> Option<LinkEvent> {
        if self.state == LinkState::Up {
            return None;
        }
        self.state = LinkState::Up;
        Some(LinkEvent::Up)
    }

    /// Authenticates and decrypts a data packet in place. On success the plaintext (frames and
    /// padding) is `datagram[DATA_HEADER_LEN..DATA_HEADER_LEN + n]`.
    pub fn open(
        &mut self,
        now: Instant,
        hdr: &DataHeader,
        datagram: &mut [u8],
    ) -> Result<(usize, Option<LinkEvent>), Reject> {
        let in_pending = self.pending.as_ref().is_some_and(|p| p.local_index == hdr.receiver_index);
        let session = if in_pending {
            self.pending.as_mut()
        } else {
            self.session.as_mut().filter(|s| s.local_index == hdr.receiver_index)
        };
        let Some(session) = session else { return Err(Reject::UnknownIndex) };
        enum Which {
            Cur,
            Next,
            Prev,
        }
        let which = if session.cur.id == hdr.epoch {
            Which::Cur
        } else if session.next.as_ref().is_some_and(|(n, _)| n.id == hdr.epoch) {
            Which::Next
        } else if session
            .prev
            .as_ref()
            .is_some_and(|(p, exp)| p.id == hdr.epoch && (*exp > now || !session.peer_on_cur))
        {
            Which::Prev
        } else {
            return Err(Reject::StaleKey);
        };
        let epoch = match which {
            Which::Cur => &mut session.cur,
            Which::Next => match session.next.as_mut() {
                Some((n, _)) => n,
                None => unreachable!("checked above"),
            },
            Which::Prev => match session.prev.as_mut() {
                Some((p, _)) => p,
                None => unreachable!("checked above"),
            },
        };
        if !epoch.replay.check(hdr.counter) {
            return Err(Reject::Replayed);
        }
        // No associated data, as in WireGuard: every header field is bound already. The epoch
        // and index pick the key and the counter is the nonce, so changing any of them fails
        // authentication; the type and reserved bytes are checked by the parser.
        let body = &mut datagram[DATA_HEADER_LEN..];
        let n = epoch.recv.open(hdr.counter, &[], body).map_err(|_| Reject::Decrypt)?;
        epoch.replay.update(hdr.counter);
        epoch.recv_count += 1;
        let peer_count = epoch.recv_count;
        let session_top = if in_pending { self.pending.as_mut() } else { self.session.as_mut() };
        if let Some(s) = session_top {
            self.last_was_newest = hdr.counter >= s.rx_top;
            s.rx_top = s.rx_top.max(hdr.counter + 1);
            if matches!(which, Which::Cur) && !s.peer_on_cur {
                // The peer switched too: the old key's grace runs from now.
                s.peer_on_cur = true;
                if let Some((_, exp)) = s.prev.as_mut() {
                    *exp = (*exp).max(now + self.config.old_key_grace);
                }
            }
        }
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += (DATA_HEADER_LEN + body.len()) as u64;
        self.last_recv = now;
        // The peer is there: whatever we sent before this is answered.
        self.answered_now();
        if !in_pending {
            self.confirm_sent = None;
        }
        if matches!(which, Which::Next) {
            // The initiator confirmed the new epoch: switch our sending key too.
            if let Some(s) = if in_pending { self.pending.as_mut() } else { self.session.as_mut() } {
                if let Some((mut next, _)) = s.next.take() {
                    next.send_counter = s.cur.send_counter;
                    next.first_counter = s.cur.send_counter;
                    let old = std::mem::replace(&mut s.cur, next);
                    s.prev = Some((old, now + self.config.old_key_grace));
                    self.stats.rekeys += 1;
                    self.stats.last_minute.rekey(now);
                }
            }
        }
        let mut event = None;
        if in_pending {
            let replaced = self.session.is_some();
            if let Some(p) = self.pending.take() {
                self.install(p, now);
            }
            event = self.mark_up().or(replaced.then_some(LinkEvent::Reset));
        }
        // What the peer sent under this key tells the rekeying side when its direction needs
        // a new key too.
        if let Some(s) = self.session.as_ref() {
            if s.initiator && s.rekey.is_none() && peer_count >= self.config.rekey_after_packets {
                self.force_rekey = true;
            }
        }
        Ok((n, event))
    }
}

impl<A: Clone> Link<A> {
    /// Handles a link-level frame (ping, rekey, close). Route frames go to the router.
    pub fn on_frame(
        &mut self,
        now: Instant,
        rng: &mut dyn CryptoRngCore,
        frame: &Frame<'_>,
    ) -> Result<Option<LinkEvent>, Reject> {
        match frame {
            // A probe's answer is the ack the forwarder sends for it.
            Frame::Ping | Frame::Probe => Ok(None),
            Frame::Close { .. } => Ok(self.go_down(now, DownReason::PeerClosed)),
            Frame::Rekey { epoch, ephemeral } => {
                let Some(s) = self.session.as_mut() else { return Err(Reject::StaleKey) };
                if s.initiator {
                    // Only the handshake initiator drives rekeys; ignore a confused peer.
                    return Err(Reject::Malformed);
                }
                if let Some((n, ack)) = &s.next {
                    if n.id == *epoch {
                        // Our answer was lost: send the same one again.
                        let ack = *ack;
                        self.push_control(Frame::RekeyAck { epoch: *epoch, ephemeral: &ack });
                        return Ok(None);
                    }
                }
                if *epoch != s.cur.id.wrapping_add(1) {
                    return Err(Reject::StaleKey);
                }
                let their = handshake::parse_ephemeral(ephemeral).map_err(|_| Reject::Malformed)?;
                let e = Ephemeral::generate(&mut RngRef(rng));
                let keys = handshake::rekey(&s.cur.chain, &e.dh(&their), false);
                let e_pub = e.public_bytes();
                s.next = Some((KeyEpoch::new(*epoch, keys, now, s.cur.send_counter), e_pub));
                self.push_control(Frame::RekeyAck { epoch: *epoch, ephemeral: &e_pub });
                Ok(None)
            }
            Frame::RekeyAck { epoch, ephemeral } => {
                let Some(s) = self.session.as_mut() else { return Err(Reject::StaleKey) };
                let Some(p) = s.rekey.as_ref().filter(|p| p.epoch == *epoch) else { return Err(Reject::StaleKey) };
                let their = handshake::parse_ephemeral(ephemeral).map_err(|_| Reject::Malformed)?;
                let keys = handshake::rekey(&s.cur.chain, &p.e.dh(&their), true);
                self.stats.rtt = Some(now.saturating_duration_since(p.sent));
                let new = KeyEpoch::new(*epoch, keys, now, s.cur.send_counter);
                let old = std::mem::replace(&mut s.cur, new);
                s.prev = Some((old, now + self.config.old_key_grace));
                s.peer_on_cur = false;
                s.rekey = None;
                self.force_rekey = false;
                self.traffic_since_rekey = false;
                self.stats.rekeys += 1;
                self.stats.last_minute.rekey(now);
                // Confirms the new epoch to the peer, which then switches its sending key.
                self.push_control(Frame::Ping);
                Ok(None)
            }
            _ => Err(Reject::UnknownType),
        }
    }

    fn push_control(&mut self, frame: Frame<'_>) {
        if matches!(frame, Frame::Rekey { .. } | Frame::Probe) {
            self.control_elicits = true;
        }
        self.control.push(&frame);
    }

    /// Traffic (route messages, route control, credit; not bare acks, pings or probes)
    /// arrived on this link: the key rotates `rekey_interval` after the last rotation (the
    /// node calls this after handling a packet's frames).
    pub fn note_traffic(&mut self) {
        self.traffic_since_rekey = true;
    }

    /// Whether the current key may no longer send (older than `key_max_age`): the link must
    /// handshake again before its next packet.
    pub fn key_expired(&self, now: Instant) -> bool {
        self.session.as_ref().is_some_and(|s| now.saturating_duration_since(s.cur.started) >= self.config.key_max_age)
    }

    /// Starts a fresh handshake under an up link whose key expired, unless one is under way.
    /// Returns whether one was started.
    pub fn refresh_session(
        &mut self,
        now: Instant,
        rng: &mut dyn CryptoRngCore,
        local: &SecretKey,
        local_index: u32,
    ) -> bool {
        // Not while a handshake is under way either way: ours, or the peer's that we answered
        // (its answer waits in `handshake_out`, its session in `pending`).
        if self.handshake.is_some() || self.pending.is_some() || self.handshake_out.is_some() || !self.key_expired(now)
        {
            return false;
        }
        self.start_handshake(now, rng, local, local_index);
        true
    }

    /// Whether a handshake is under way: ours waiting for its answer, or the peer's that we
    /// answered waiting for its first packet.
    pub fn handshaking(&self) -> bool {
        self.handshake.is_some() || self.pending.is_some()
    }

    /// Closes the link: tells the peer and stops dialling.
    pub fn close(&mut self, now: Instant) -> Option<LinkEvent> {
        self.dial = false;
        if self.can_send() {
            self.push_control(Frame::Close { reason: 0 });
        }
        self.go_down(now, DownReason::Closed)
    }

    fn go_down(&mut self, now: Instant, reason: DownReason) -> Option<LinkEvent> {
        // The close frame (if any) is the only thing still sent.
        let close = if reason == DownReason::Closed { self.seal_control_only(now) } else { None };
        for s in self.session.take().into_iter().chain(self.pending.take()) {
            self.retired.push(s.local_index);
        }
        if let Some(h) = self.handshake.take() {
            self.retired.push(h.state.sender_index);
        }
        self.control.clear();
        self.control_elicits = false;
        self.handshake_out = close;
        self.urgent_copies = 0;
        self.force_rekey = false;
        self.traffic_since_rekey = false;
        self.answered_now();
        self.confirm_sent = None;
        let was = self.state;
        self.state = LinkState::Down;
        if self.dial {
            self.next_handshake = Some(now + self.retry_delay());
        }
        (was != LinkState::Down).then_some(LinkEvent::Down(reason))
    }

    fn seal_control_only(&mut self, now: Instant) -> Option<Vec<u8>> {
        let mut pkt = Vec::new();
        self.begin_packet(now, &mut pkt)?;
        self.seal_packet(now, &mut pkt, false, false).map(|_| pkt)
    }

    /// The interface the link lives on went away: the link is down now (no dead-peer wait)
    /// and does not handshake until [`Link::unpark`].
    pub fn park(&mut self, now: Instant) -> Option<LinkEvent> {
        self.parked = true;
        self.go_down(now, DownReason::InterfaceGone)
    }

    /// The interface is back: a dialled link handshakes at once.
    pub fn unpark(&mut self, now: Instant) {
        if std::mem::take(&mut self.parked) && self.dial {
            self.dial_now(now);
        }
    }

    /// Whether we dial this peer (and so redial it when the link is down).
    pub fn dialled(&self) -> bool {
        self.dial
    }

    /// Whether the link waits for its interface to come back.
    pub fn parked(&self) -> bool {
        self.parked
    }

    /// The network changed (an interface came up, a radio associated): if the link is not up,
    /// handshake again now instead of waiting out the backoff, and keep dialling it.
    pub fn dial_now(&mut self, now: Instant) {
        self.dial = true;
        self.parked = false;
        if self.state != LinkState::Up {
            self.handshake_attempts = 0;
            self.next_handshake = Some(now);
            // A handshake in flight may have gone nowhere (no route then): a fresh one now
            // rather than at its retry.
            if let Some(old) = self.handshake.take() {
                self.retired.push(old.state.sender_index);
            }
        }
    }

    /// The network changed under an up link (the OS switched WiFi and LTE): send a probe now
    /// (the peer acks it), so the path is tried at once and a peer that moved, or a path that
    /// died, is found within `dead_after`; a link that is down handshakes again now.
    pub fn probe_now(&mut self, now: Instant) {
        if self.state == LinkState::Up {
            self.push_control(Frame::Probe);
        } else if self.dial && !self.parked {
            self.dial_now(now);
        }
    }

    fn retry_delay(&self) -> Duration {
        if self.state == LinkState::Up {
            // A new session under a live link (its key grew too old): the peer answered
            // lately, so a lost handshake is loss, not absence. Retry at the quick pace for
            // as long as the link lives (dead-peer detection ends it).
            return self.config.handshake_retry;
        }
        // A few quick retries first (a lossy radio link loses handshakes often), then back off;
        // a link that was up gets as many quick retries as its measured loss needs to get
        // through but for a 1 in 10,000 chance (a peer behind 70% loss each way: about 100).
        let quick = if self.stats.handshakes > 0 {
            self.needed_sends().div_ceil(self.handshake_copies()).clamp(4, MAX_QUICK_HANDSHAKES)
        } else {
            4
        };
        let shift = self.handshake_attempts.saturating_sub(quick).min(16);
        self.config.handshake_retry.saturating_mul(1 << shift).min(self.config.handshake_retry_max)
    }

    /// A packet that asks for an answer went out.
    fn unanswered_send(&mut self, now: Instant) {
        if self.unanswered_since.is_none() {
            self.unanswered_since = Some(now);
            self.outcomes_before = self.outcomes;
        }
        self.unanswered_sends = self.unanswered_sends.saturating_add(1);
    }

    /// Something authenticated came back: nothing we sent is unanswered any more.
    fn answered_now(&mut self) {
        self.unanswered_since = None;
        self.unanswered_sends = 0;
    }

    /// The node's count of this link's datagrams acknowledged and lost (either way), which
    /// dead-peer detection uses to tell a very lossy link from a dead one.
    pub fn set_outcomes(&mut self, acked: u64, lost: u64) {
        self.outcomes = (acked, lost);
    }

    /// A pessimistic estimate of the share of round trips this link loses: the upper end of a
    /// Wilson interval (z = 1.5) over its datagrams' outcomes and its last handshake's tries, so
    /// a young link with little evidence counts as very lossy and a well-measured one as what
    /// it is.
    fn round_trip_loss(&self) -> f64 {
        let (lost, n) = self.round_trip_evidence();
        if n < 1.0 {
            return MAX_ROUND_TRIP_LOSS;
        }
        let (p, z2) = (lost / n, WILSON_Z2);
        let upper = (p + z2 / (2.0 * n) + (z2 * (p * (1.0 - p) / n + z2 / (4.0 * n * n))).sqrt()) / (1.0 + z2 / n);
        upper.clamp(0.0, MAX_ROUND_TRIP_LOSS)
    }

    /// Round trips lost and tried, as far as this link knows: its datagrams' outcomes (before
    /// the current silence, if any) and its last handshake's tries.
    fn round_trip_evidence(&self) -> (f64, f64) {
        let tries = u64::from(self.handshake_tries);
        let (acked, lost) = self.evidence_outcomes();
        ((lost + tries.saturating_sub(1)) as f64, (acked + lost + tries) as f64)
    }

    /// Whether enough packets went unanswered to call the peer dead once `dead_after` has
    /// passed: so many that a live peer behind this link's (pessimistic) loss would have
    /// answered one but for a 1 in 10,000 chance. Until then the link probes every
    /// [`Link::probe_gap`], for at most [`DEAD_STRETCH`] times `dead_after`. A well-measured
    /// link that loses little needs a handful, as before; one that loses 70% each way needs
    /// about 100, one that loses 90% (99% of round trips) some 900.
    fn dead_enough_sends(&self) -> bool {
        self.unanswered_sends >= self.needed_sends()
    }

    /// How many packets in a row this link's (pessimistic) loss can swallow with a chance of
    /// [`DEAD_CHANCE`].
    fn needed_sends(&self) -> u32 {
        let loss = self.round_trip_loss();
        if loss <= 0.0 {
            return 0;
        }
        (DEAD_CHANCE.ln() / loss.ln()).ceil().min(f64::from(u32::MAX)) as u32
    }

    /// Copies of each handshake message for a round trip to get through with an even chance
    /// under this link's measured loss, at most [`MAX_HANDSHAKE_COPIES`]: 1 on a clean link or
    /// one with little evidence, 4 at 40% loss each way, 16 at 80% and beyond. A datagram's
    /// outcome is about one way (its acks are cumulative, and repeated on a lossy link), a
    /// handshake needs both ways, and the last handshake's tries measure both ways directly.
    /// (Estimates, not the pessimistic bound dead-peer detection uses: copies cost packets on
    /// every renewal.)
    fn copies_for_loss(&self) -> u32 {
        let (acked, lost) = self.evidence_outcomes();
        let one_way = lost as f64 / (acked + lost + 1) as f64;
        let tries = f64::from(self.handshake_tries);
        let both_ways = (tries - 1.0).max(0.0) / (tries + 1.0);
        copies_for_even_chance((1.0 - (1.0 - one_way).powi(2)).max(both_ways), MAX_HANDSHAKE_COPIES)
    }

    /// The datagram outcomes loss estimates weigh: those before the current silence, if any
    /// (the datagrams lost since are the silence itself, not the link's loss).
    fn evidence_outcomes(&self) -> (u64, u64) {
        if self.unanswered_since.is_some() {
            self.outcomes_before
        } else {
            self.outcomes
        }
    }

    /// Copies of our next handshake init. A link that is or was up knows its loss. One never
    /// up does not: its peer may just be absent, so one copy for the first four tries, then 2,
    /// then 4 (a first contact over a very lossy radio still gets through in tens of seconds).
    fn handshake_copies(&self) -> u32 {
        if self.state == LinkState::Up || self.stats.handshakes > 0 {
            return self.copies_for_loss();
        }
        1 << self.handshake_attempts.saturating_sub(4).min(2)
    }

    /// The pace of dead-peer probes: two round trips, at least [`MIN_PROBE_GAP`].
    fn probe_gap(&self) -> Duration {
        self.stats.rtt.map_or(MIN_PROBE_GAP, |r| (r * 2).max(MIN_PROBE_GAP))
    }

    fn can_send(&self) -> bool {
        self.session.is_some()
    }

    /// A handshake message (or final close) waiting to go out before anything else.
    pub fn take_urgent(&mut self, now: Instant) -> Option<Vec<u8>> {
        let p = if self.urgent_copies > 0 {
            self.urgent_copies -= 1;
            self.handshake_out.clone()?
        } else {
            self.handshake_out.take()?
        };
        // Refreshes NAT bindings as well as a keepalive would.
        self.last_send = now;
        self.stats.last_minute.packet(now);
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += p.len() as u64;
        Some(p)
    }

    /// Whether link-level frames (ping, rekey, close) are waiting.
    pub fn has_control(&self) -> bool {
        !self.control.is_empty()
    }

    /// The next packet carrying only link-level frames, if any (the node adds route frames
    /// through [`Link::begin_packet`] / [`Link::seal_packet`]).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if let Some(p) = self.take_urgent(now) {
            return Some(p);
        }
        if self.control.is_empty() {
            return None;
        }
        let mut pkt = Vec::new();
        self.begin_packet(now, &mut pkt)?;
        self.seal_packet(now, &mut pkt, false, false).map(|_| pkt)
    }

    /// Starts a data packet in `buf`: header space, then queued link-level frames. Returns the
    /// room left for more frames, or `None` if the link cannot send (no session yet, or its
    /// key is past `key_max_age`: see [`Link::refresh_session`]).
    pub fn begin_packet(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<usize> {
        let s = self.session.as_ref()?;
        if s.cur.send_counter >= REJECT_AFTER_PACKETS || self.key_expired(now) {
            return None;
        }
        let cap = self.config.max_plaintext();
        buf.clear();
        buf.reserve(self.config.mtu);
        buf.resize(DATA_HEADER_LEN, 0);
        let used = self.control.drain_into(buf, cap);
        self.control_end = buf.len();
        Some(cap - used)
    }

    /// Pads and seals the packet begun by [`Link::begin_packet`]; returns its counter, or
    /// `None` if it holds no frame. `traffic`: the frames added after the link's own are route
    /// messages, route control or credit (a bare ack is not), which makes the key rotate;
    /// `answered`: the peer will ack them, so silence after them means it is gone (on-demand
    /// dead-peer detection).
    pub fn seal_packet(&mut self, now: Instant, pkt: &mut Vec<u8>, traffic: bool, answered: bool) -> Option<u64> {
        let pad = self.config.pad_to.max(1);
        let s = self.session.as_mut()?;
        let plain = pkt.len().checked_sub(DATA_HEADER_LEN).filter(|n| *n > 0)?;
        let padded = plain.div_ceil(pad) * pad;
        pkt.resize(DATA_HEADER_LEN + padded, 0);
        let counter = s.cur.send_counter;
        s.cur.send_counter += 1;
        let hdr = DataHeader { epoch: s.cur.id, receiver_index: s.remote_index, counter };
        let (h, body) = pkt.split_at_mut(DATA_HEADER_LEN);
        let h: &mut [u8; DATA_HEADER_LEN] = h.try_into().ok()?;
        hdr.write(h);
        let tag = s.cur.send.seal(counter, &[], body);
        pkt.extend_from_slice(&tag);
        if s.initiator
            && s.rekey.is_none()
            && s.cur.send_counter - s.cur.first_counter >= self.config.rekey_after_packets
        {
            self.force_rekey = true;
        }
        self.last_send = now;
        self.stats.last_minute.packet(now);
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += pkt.len() as u64;
        let control_elicits = self.control_elicits && self.control_end > DATA_HEADER_LEN;
        if control_elicits && self.control.is_empty() {
            self.control_elicits = false;
        }
        if answered || control_elicits {
            self.unanswered_send(now);
        }
        if traffic {
            self.traffic_since_rekey = true;
        }
        self.control_end = 0;
        Some(counter)
    }

    /// When `timer` fires, derived from the current state.
    pub fn deadline(&self, timer: Timer) -> Option<Instant> {
        match timer {
            Timer::Handshake => match &self.handshake {
                Some(h) => Some(h.sent + self.retry_delay()),
                None if self.session.is_none() && self.dial && !self.parked => self.next_handshake,
                None => None,
            },
            Timer::Confirm => self.confirm_sent.map(|t| t + self.config.rekey_retry),
            Timer::Rekey => {
                let s = self.session.as_ref().filter(|s| s.initiator)?;
                match &s.rekey {
                    Some(p) => Some(p.sent + self.config.rekey_retry),
                    None if self.force_rekey => Some(s.cur.started),
                    // Idle since the last rotation: nothing to protect, no timer. An expired
                    // key is replaced by a handshake when something must be sent.
                    None if self.traffic_since_rekey && !self.handshaking() => {
                        Some(s.cur.started + self.config.rekey_interval)
                    }
                    None => None,
                }
            }
            Timer::Keepalive => {
                let every = self.config.keepalive?;
                (self.session.is_some() && self.state == LinkState::Up).then(|| self.last_send + every)
            }
            Timer::Dead => {
                let since = self.unanswered_since.filter(|_| self.state == LinkState::Up)?;
                let at = since + self.config.dead_after;
                if self.dead_enough_sends() {
                    return Some(at);
                }
                // Too little evidence yet: probe at the link's pace until there is enough.
                Some(at.max(self.last_send + self.probe_gap()).min(since + self.config.dead_after * DEAD_STRETCH))
            }
            // Kept, whatever its grace, until the peer sends under the new key (`peer_on_cur`).
            Timer::OldKey => {
                self.session.as_ref().filter(|s| s.peer_on_cur).and_then(|s| s.prev.as_ref().map(|(_, exp)| *exp))
            }
        }
    }

    /// The link's next deadline, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Timer::ALL.iter().filter_map(|t| self.deadline(*t)).min()
    }

    /// Runs every expired timer. `new_index` gives a fresh local index when a handshake starts.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        rng: &mut dyn CryptoRngCore,
        local: &SecretKey,
        new_index: &mut dyn FnMut(&mut dyn CryptoRngCore) -> u32,
    ) -> Option<LinkEvent> {
        let mut event = None;
        if self.deadline(Timer::Dead).is_some_and(|d| d <= now) {
            let stretched = self.unanswered_since.is_some_and(|s| now >= s + self.config.dead_after * DEAD_STRETCH);
            if self.dead_enough_sends() || stretched {
                event = self.go_down(now, DownReason::Timeout);
            } else {
                // Silence a lossy link could explain: ask again (the probe counts as a send).
                self.push_control(Frame::Probe);
                self.last_send = now;
            }
        }
        if self.deadline(Timer::Handshake).is_some_and(|d| d <= now) {
            let idx = new_index(rng);
            self.start_handshake(now, rng, local, idx);
        }
        if self.deadline(Timer::OldKey).is_some_and(|d| d <= now) {
            if let Some(s) = self.session.as_mut() {
                s.prev = None;
            }
        }
        if self.deadline(Timer::Confirm).is_some_and(|d| d <= now) {
            self.confirm_sent = Some(now);
            self.push_control(Frame::Probe);
        }
        if self.deadline(Timer::Rekey).is_some_and(|d| d <= now) {
            self.rekey_step(now, rng);
        }
        if self.deadline(Timer::Keepalive).is_some_and(|d| d <= now) && self.control.is_empty() {
            self.push_control(Frame::Ping);
            self.stats.keepalives += 1;
            // Counts as sent for scheduling even if the packet goes out a moment later.
            self.last_send = now;
        }
        event
    }

    fn rekey_step(&mut self, now: Instant, rng: &mut dyn CryptoRngCore) {
        let Some(s) = self.session.as_mut() else { return };
        match s.rekey.as_mut() {
            Some(p) => {
                // Resend until answered; a peer that stays silent is caught by dead-peer
                // detection, which drops the session and this pending rekey with it.
                p.sent = now;
                let (epoch, e_pub) = (p.epoch, p.e_pub);
                self.push_control(Frame::Rekey { epoch, ephemeral: &e_pub });
            }
            None => {
                let e = Ephemeral::generate(&mut RngRef(rng));
                let e_pub = e.public_bytes();
                let epoch = s.cur.id.wrapping_add(1);
                s.rekey = Some(PendingRekey { epoch, e, e_pub, sent: now });
                self.push_control(Frame::Rekey { epoch, ephemeral: &e_pub });
            }
        }
    }
}
