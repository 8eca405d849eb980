//! Virtual links (seed: "virtual routes: topology at scale"): a route `A -> B -> C -> D` that
//! carries a link between its ends, so to everything above the forwarder `A - D` is one hop.
//! Routes built over the virtual hop are entries at A and D only; B and C hold the one
//! carrier route entry whatever the number of routes inside it.
//!
//! The carrier is an ordinary route (end-to-end sealed between A and D, reliable and in order
//! per hop, with credit), so the virtual link needs no crypto or framing of its own: a
//! virtual packet is `counter (u64) | frames`, the same frames a physical link bundles (route
//! data, credit, route control, acks), cut into route messages of kind `MSG_LINK` (`MORE`
//! pieces, then an `END`). The source opens the carrier, then introduces itself with a
//! `HELLO`: its key and a signature binding it to D's key and a fresh nonce (D learns who is at
//! the other end, which it needs to build routes back; the relays never see it, it travels
//! sealed to D).

use crate::identity::{PublicKey, SecretKey, PUBLIC_KEY_LEN, SIGNATURE_LEN};
use crate::route::RouteId;
use crate::stats::Reject;

/// Nothing: keeps an idle carrier's relays from forgetting it.
pub(crate) const KEEPALIVE: u8 = 0;
pub(crate) const HELLO: u8 = 1;
pub(crate) const MORE: u8 = 2;
pub(crate) const END: u8 = 3;
/// Pieces of a link datagram on a return route (an asymmetric link's way back).
pub(crate) const RETURN_MORE: u8 = 4;
pub(crate) const RETURN_END: u8 = 5;
// `pieces` tags the last piece `more + 1`.
const _: () = assert!(END == MORE + 1 && RETURN_END == RETURN_MORE + 1);

const HELLO_LABEL: &[u8] = b"skyroute virtual link v1";
const NONCE_LEN: usize = 16;
pub(crate) const HELLO_LEN: usize = 1 + PUBLIC_KEY_LEN + NONCE_LEN + SIGNATURE_LEN;
/// Most bytes a virtual packet may be reassembled from (a peer cannot make us buffer more).
pub(crate) const MAX_PACKET: usize = 64 * 1024;

/// One end of a virtual link.
pub(crate) struct VLink {
    pub peer: PublicKey,
    pub carrier: RouteId,
    /// We opened the carrier (and wait for it to be ready before the link is up).
    pub source: bool,
    pub up: bool,
    /// Next virtual packet number (for the forwarder's acks).
    pub counter: u64,
    /// Pieces of the packet being received.
    pub partial: Reassembly,
    /// When we last put something on the carrier (the source keeps an idle carrier alive).
    pub last_sent: Option<std::time::Instant>,
}

/// Pieces of one packet: `more`-tagged ones, then the one tagged `more + 1`.
pub(crate) struct Reassembly {
    more: u8,
    buf: Vec<u8>,
}

fn signed(me: &PublicKey, peer: &PublicKey, nonce: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HELLO_LABEL.len() + 2 * PUBLIC_KEY_LEN + NONCE_LEN);
    m.extend_from_slice(HELLO_LABEL);
    m.extend_from_slice(&me.to_bytes());
    m.extend_from_slice(&peer.to_bytes());
    m.extend_from_slice(nonce);
    m
}

/// The source's introduction to the last hop `peer`.
pub(crate) fn hello(identity: &SecretKey, peer: &PublicKey, nonce: [u8; NONCE_LEN]) -> Vec<u8> {
    let me = identity.public_key();
    let mut b = Vec::with_capacity(HELLO_LEN);
    b.push(HELLO);
    b.extend_from_slice(&me.to_bytes());
    b.extend_from_slice(&nonce);
    b.extend_from_slice(&identity.sign(&signed(&me, peer, &nonce)));
    b
}

/// Checks an introduction addressed to `me`; returns the source's key.
pub(crate) fn check_hello(b: &[u8], me: &PublicKey) -> Result<PublicKey, Reject> {
    if b.len() != HELLO_LEN || b[0] != HELLO {
        return Err(Reject::BadRouteMessage);
    }
    let key = PublicKey::from_bytes(&b[1..1 + PUBLIC_KEY_LEN]).map_err(|_| Reject::BadRouteMessage)?;
    let nonce = &b[1 + PUBLIC_KEY_LEN..1 + PUBLIC_KEY_LEN + NONCE_LEN];
    let sig = &b[1 + PUBLIC_KEY_LEN + NONCE_LEN..];
    if key == *me || !key.verify(&signed(&key, me, nonce), sig) {
        return Err(Reject::BadRouteMessage);
    }
    Ok(key)
}

impl Reassembly {
    pub fn new(more: u8) -> Reassembly {
        Reassembly { more, buf: Vec::new() }
    }

    /// Takes one piece; returns a whole packet (at least 8 bytes) when the last piece came.
    pub fn take(&mut self, piece: &[u8]) -> Result<Option<Vec<u8>>, Reject> {
        let (&tag, body) = piece.split_first().ok_or(Reject::Truncated)?;
        if tag != self.more && tag != self.more + 1 {
            return Err(Reject::Malformed);
        }
        if self.buf.len() + body.len() > MAX_PACKET {
            self.buf.clear();
            return Err(Reject::Oversized);
        }
        self.buf.extend_from_slice(body);
        if tag == self.more {
            return Ok(None);
        }
        let p = std::mem::take(&mut self.buf);
        if p.len() < 8 {
            return Err(Reject::Truncated);
        }
        Ok(Some(p))
    }
}

/// Cuts a packet into route messages of at most `mtu` bytes, tagged `more` (all but the
/// last) and `more + 1` (the last).
pub(crate) fn pieces(packet: &[u8], mtu: usize, more: u8) -> Vec<Vec<u8>> {
    let chunk = mtu.saturating_sub(1).max(1);
    let n = packet.len().div_ceil(chunk).max(1);
    packet
        .chunks(chunk)
        .enumerate()
        .map(|(i, c)| {
            let mut m = Vec::with_capacity(c.len() + 1);
            m.push(if i + 1 == n { more + 1 } else { more });
            m.extend_from_slice(c);
            m
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    fn key(seed: u64) -> SecretKey {
        SecretKey::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
    }

    #[test]
    fn hello_binds_source_and_destination() {
        let (a, d, x) = (key(1), key(2), key(3));
        let h = hello(&a, &d.public_key(), [7; NONCE_LEN]);
        assert_eq!(check_hello(&h, &d.public_key()), Ok(a.public_key()));
        // Meant for another node, forged, truncated: refused.
        assert!(check_hello(&h, &x.public_key()).is_err());
        let mut f = h.clone();
        f[HELLO_LEN - 1] ^= 1;
        assert!(check_hello(&f, &d.public_key()).is_err());
        assert!(check_hello(&h[..HELLO_LEN - 1], &d.public_key()).is_err());
        // Someone else's key with our signature.
        let mut other = h.clone();
        other[1..1 + PUBLIC_KEY_LEN].copy_from_slice(&x.public_key().to_bytes());
        assert!(check_hello(&other, &d.public_key()).is_err());
    }

    #[test]
    fn pieces_reassemble_and_junk_is_refused() {
        let packet: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut v = Reassembly::new(MORE);
        let ps = pieces(&packet, 1200, MORE);
        assert_eq!(ps.len(), 3);
        let mut out = None;
        for p in &ps {
            out = v.take(p).unwrap();
        }
        assert_eq!(out.as_deref(), Some(&packet[..]));
        assert!(v.take(&[]).is_err() && v.take(&[9, 1]).is_err() && v.take(&[END, 1, 2]).is_err());
        // Return-route pieces are not virtual link pieces.
        assert!(v.take(&[RETURN_END, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        let mut r = Reassembly::new(RETURN_MORE);
        let p = pieces(&packet, 5000, RETURN_MORE);
        assert_eq!(r.take(&p[0]).unwrap().as_deref(), Some(&packet[..]));
        let big = vec![0u8; 60_000];
        assert!(v.take(&[MORE].iter().chain(&big).copied().collect::<Vec<_>>()).is_ok());
        assert_eq!(v.take(&[MORE].iter().chain(&big).copied().collect::<Vec<_>>()), Err(Reject::Oversized));
    }

    proptest::proptest! {
        #[test]
        fn random_pieces_and_hellos_never_panic(pieces in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 0..40)) {
            let me = key(9).public_key();
            let mut a = Reassembly::new(MORE);
            let mut b = Reassembly::new(RETURN_MORE);
            for p in &pieces {
                let _ = check_hello(p, &me);
                if let Ok(Some(x)) = a.take(p) {
                    proptest::prop_assert!(x.len() >= 8 && x.len() <= MAX_PACKET);
                }
                let _ = b.take(p);
            }
        }
    }
}
