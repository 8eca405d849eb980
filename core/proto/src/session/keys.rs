//! End-to-end session keys: the Noise IK handshake (under the session prologue, with the
//! destination's static key) gives one key per direction plus a chaining key. Each direction
//! then ratchets on its own: the sender moves to epoch `e + 1` after `rekey_after` or
//! `rekey_packets`, with `(key', chain') = HKDF(chain, "skyroute session rekey")`, so each new
//! key is hashed from the previous chain and an old key cannot be computed from a new one. The
//! receiver follows on the first packet that opens under the next epoch and keeps the previous
//! key for packets still in flight on slower routes. The nonce is one counter per direction
//! that never goes back, across epochs, so a (key, nonce) pair is never used twice.

use std::time::{Duration, Instant};

use crate::crypto::replay::ReplayWindow;
use crate::crypto::{hkdf, AeadKey, Secret32, TAG_LEN};
use crate::noise::EpochKeys;
use crate::wire::{DATA_HEADER_LEN, TYPE_DATA, VERSION};

const REKEY_INFO: &[u8] = b"skyroute session rekey";

struct Epoch {
    n: u8,
    key: AeadKey,
    chain: Secret32,
}

impl Epoch {
    fn first(key: &Secret32, chain: &Secret32, label: &[u8]) -> Epoch {
        // Each direction gets its own chain, so the two ratchets never share a key.
        let [c] = hkdf::<1>(chain, label, REKEY_INFO);
        Epoch { n: 0, key: AeadKey::new(key), chain: c }
    }
    fn next(&self) -> Epoch {
        let [k, c] = hkdf::<2>(&self.chain, b"", REKEY_INFO);
        Epoch { n: self.n.wrapping_add(1), key: AeadKey::new(&k), chain: c }
    }
}

/// Why a session packet did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Failed authentication (forged, corrupted, or another session's key).
    Auth,
    /// Counter already seen or too old.
    Replay,
    /// Epoch neither current, previous nor next.
    StaleEpoch,
}

/// A session's keys: the send epoch and its counter, the receive epochs and the replay window.
pub struct SessionKeys {
    send: Epoch,
    send_counter: u64,
    send_started: Instant,
    send_epoch_packets: u64,
    recv: Epoch,
    recv_prev: Option<Epoch>,
    replay: ReplayWindow,
    remote_index: u32,
    /// Key rotations so far.
    pub rekeys: u64,
}

impl SessionKeys {
    /// Keys from a handshake; `initiator` picks which key sends.
    pub fn new(keys: &EpochKeys, initiator: bool, remote_index: u32, now: Instant) -> Self {
        let (send_label, recv_label): (&[u8], &[u8]) = if initiator { (b"i2r", b"r2i") } else { (b"r2i", b"i2r") };
        SessionKeys {
            send: Epoch::first(&keys.send, &keys.chain, send_label),
            send_counter: 0,
            send_started: now,
            send_epoch_packets: 0,
            recv: Epoch::first(&keys.recv, &keys.chain, recv_label),
            recv_prev: None,
            replay: ReplayWindow::default(),
            remote_index,
            rekeys: 0,
        }
    }

    /// Seals `body` into a data packet appended to `out`. Rotates the send key first when due;
    /// returns whether it did.
    pub fn seal(
        &mut self,
        now: Instant,
        rekey_after: Duration,
        rekey_packets: u64,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        let rotate =
            now.saturating_duration_since(self.send_started) >= rekey_after || self.send_epoch_packets >= rekey_packets;
        if rotate {
            self.send = self.send.next();
            self.send_started = now;
            self.send_epoch_packets = 0;
            self.rekeys += 1;
        }
        let counter = self.send_counter;
        self.send_counter += 1;
        self.send_epoch_packets += 1;
        let start = out.len();
        out.push(VERSION << 4 | TYPE_DATA);
        out.push(self.send.n);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.remote_index.to_be_bytes());
        out.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(body);
        let (hdr, rest) = out[start..].split_at_mut(DATA_HEADER_LEN);
        let tag = self.send.key.seal(counter, hdr, rest);
        out.extend_from_slice(&tag);
        rotate
    }

    /// Records an opened packet's counter: the same packet is refused from now on.
    pub fn accept(&mut self, counter: u64) {
        self.replay.update(counter);
    }

    /// Counters this far below the highest seen are too old to check (cheap early refusal).
    fn send_floor_hint(&self) -> u64 {
        self.replay.highest()
    }

    /// The counter the next sealed packet will use (for tests of nonce uniqueness).
    pub fn next_counter(&self) -> u64 {
        self.send_counter
    }

    /// Opens a data packet in place; returns the body. Authenticates first, then checks the
    /// counter against the replay window; the caller records the counter with
    /// [`SessionKeys::accept`] once it decided to use the packet.
    pub fn open<'a>(&mut self, epoch: u8, counter: u64, packet: &'a mut [u8]) -> Result<&'a [u8], OpenError> {
        if packet.len() < DATA_HEADER_LEN + TAG_LEN {
            return Err(OpenError::Auth);
        }
        if counter.saturating_add(crate::crypto::replay::WINDOW) < self.send_floor_hint() {
            return Err(OpenError::Replay);
        }
        let (hdr, rest) = packet.split_at_mut(DATA_HEADER_LEN);
        let len = if epoch == self.recv.n {
            self.recv.key.open(counter, hdr, rest).map_err(|_| OpenError::Auth)?
        } else if epoch == self.recv.n.wrapping_add(1) {
            let next = self.recv.next();
            let len = next.key.open(counter, hdr, rest).map_err(|_| OpenError::Auth)?;
            self.recv_prev = Some(std::mem::replace(&mut self.recv, next));
            len
        } else {
            match &self.recv_prev {
                Some(p) if p.n == epoch => p.key.open(counter, hdr, rest).map_err(|_| OpenError::Auth)?,
                _ => return Err(OpenError::StaleEpoch),
            }
        };
        if !self.replay.check(counter) {
            return Err(OpenError::Replay);
        }
        Ok(&rest[..len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use zeroize::Zeroizing;

    fn pair(now: Instant) -> (SessionKeys, SessionKeys) {
        let ks = |a: u8, b: u8| EpochKeys {
            send: Zeroizing::new([a; 32]),
            recv: Zeroizing::new([b; 32]),
            chain: Zeroizing::new([9; 32]),
        };
        (SessionKeys::new(&ks(1, 2), true, 7, now), SessionKeys::new(&ks(2, 1), false, 8, now))
    }

    fn header(p: &[u8]) -> (u8, u64) {
        (p[1], u64::from_be_bytes(p[8..16].try_into().unwrap()))
    }

    #[test]
    fn rekeys_chain_and_nonces_never_repeat() {
        let t0 = Instant::now(); // test-only clock
        let (mut a, mut b) = pair(t0);
        let mut seen = BTreeSet::new();
        let mut old = None;
        for i in 0..50u64 {
            let now = t0 + Duration::from_millis(i * 300);
            let mut p = Vec::new();
            a.seal(now, Duration::from_secs(1), 1 << 20, format!("m{i}").as_bytes(), &mut p);
            let (e, c) = header(&p);
            assert!(seen.insert((e, c)) && seen.iter().filter(|(_, x)| *x == c).count() == 1, "nonce reused");
            if i == 3 {
                old = Some(p.clone());
            }
            let body = b.open(e, c, &mut p).unwrap().to_vec();
            b.accept(c);
            assert_eq!(body, format!("m{i}").as_bytes());
        }
        assert!(a.rekeys >= 10, "rekeyed {} times", a.rekeys);
        // A replayed packet from an old epoch is refused.
        let mut p = old.unwrap();
        let (e, c) = header(&p);
        assert!(b.open(e, c, &mut p).is_err());
    }

    #[test]
    fn forged_and_wrong_key_packets_fail() {
        let t0 = Instant::now(); // test-only clock
        let (mut a, mut b) = pair(t0);
        let mut p = Vec::new();
        a.seal(t0, Duration::from_secs(1), 1 << 20, b"hello", &mut p);
        let mut forged = p.clone();
        let n = forged.len();
        forged[n - 1] ^= 1;
        let (e, c) = header(&forged);
        assert_eq!(b.open(e, c, &mut forged), Err(OpenError::Auth));
        // The failed attempt did not burn the counter: the real packet still opens.
        assert_eq!(b.open(e, c, &mut p).unwrap(), b"hello");
        b.accept(c);
        // Our own packet does not open under our receive key (other direction).
        let mut q = Vec::new();
        a.seal(t0, Duration::from_secs(1), 1 << 20, b"x", &mut q);
        let (e, c) = header(&q);
        assert_eq!(a.open(e, c, &mut q), Err(OpenError::Auth));
    }
}
