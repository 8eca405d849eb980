//! The Noise handshake of links and of end-to-end sessions: IK over secp256k1
//! (`Noise_IK_secp256k1_ChaChaPoly_SHA256`), the two domain-separated by their prologues.
//!
//! ```text
//!   <- s                      (the initiator knows the responder's static key)
//!   ...
//!   -> e, es, s, ss           HandshakeInit (payload: the initiator's timestamp)
//!   <- e, ee, se              HandshakeResp
//! ```
//! DH is secp256k1 ECDH (x coordinate), HKDF-SHA256 chains the keys, ChaCha20-Poly1305 encrypts
//! the initiator's static key and the payloads: the init's is a 12-byte timestamp (a responder
//! refuses an init not newer than the last it took from that key, as WireGuard's TAI64N), the
//! response's is empty. The init ends with two MACs the link layer fills
//! ([`crate::link::cookie`]); sessions leave them zero. Both sides are authenticated by their
//! static keys; the ephemeral-ephemeral DH gives forward secrecy. The link indexes are mixed into
//! the handshake hash so an on-path attacker cannot alter them. The final chaining key is kept to
//! chain later rekeys: `ck' = HKDF(ck, DH(e_a', e_b'))`.

use zeroize::Zeroizing;

use crate::crypto::{self, dh_static, hkdf, AeadKey, Ephemeral, Secret32};
use crate::identity::{PublicKey, SecretKey, PUBLIC_KEY_LEN};
use crate::wire::{
    self, HandshakeInit, HandshakeResp, ENC_STATIC_LEN, HANDSHAKE_INIT_LEN, HANDSHAKE_RESP_LEN, MAC_LEN, TIMESTAMP_LEN,
};
use rand_core::CryptoRngCore;

const PROTOCOL_NAME: &[u8] = b"Noise_IK_secp256k1_ChaChaPoly_SHA256";
/// The prologue of link handshakes.
pub const LINK_PROLOGUE: &[u8] = b"skyroute link v1";
/// The prologue of end-to-end session handshakes: the same pattern, domain-separated from links
/// so a link handshake can never be replayed as a session handshake or the other way round.
pub const SESSION_PROLOGUE: &[u8] = b"skyroute session v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
/// Why a handshake message was refused.
pub enum HandshakeError {
    #[error("handshake message failed authentication")]
    /// A sealed part did not open (forged, corrupted or for another key).
    Decrypt,
    #[error("handshake carried an invalid public key")]
    /// A key in the message is not a valid secp256k1 point.
    BadKey,
}

/// Keys for one epoch, for one side: send and receive keys plus the chaining key for rekeys.
pub struct EpochKeys {
    /// The key this side seals with.
    pub send: Secret32,
    /// The key this side opens with.
    pub recv: Secret32,
    /// The chaining key the next epoch's keys derive from.
    pub chain: Secret32,
}

struct SymmetricState {
    ck: Secret32,
    h: [u8; 32],
}

impl SymmetricState {
    fn new(prologue: &[u8], responder_static: &PublicKey) -> Self {
        let h0 = crypto::hash(&[PROTOCOL_NAME]);
        let mut s = SymmetricState { ck: Zeroizing::new(h0), h: h0 };
        s.mix_hash(prologue);
        s.mix_hash(&responder_static.to_bytes());
        s
    }
    fn mix_hash(&mut self, data: &[u8]) {
        self.h = crypto::hash(&[&self.h, data]);
    }
    fn mix_key(&mut self, dh: &[u8; 32]) -> AeadKey {
        let [ck, k] = hkdf::<2>(&self.ck, dh, b"");
        self.ck = ck;
        AeadKey::new(&k)
    }
    fn encrypt_and_hash(&mut self, k: &AeadKey, plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        k.seal_to_vec(0, &self.h, plaintext, out);
        let ct = out[start..].to_vec();
        self.mix_hash(&ct);
    }
    fn decrypt_and_hash(&mut self, k: &AeadKey, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>, HandshakeError> {
        let pt = k.open_to_vec(0, &self.h, ct).map_err(|_| HandshakeError::Decrypt)?;
        self.mix_hash(ct);
        Ok(pt)
    }
    /// Transport keys: (initiator->responder, responder->initiator, next chaining key).
    fn split(&self) -> [Secret32; 3] {
        hkdf::<3>(&self.ck, b"", b"skyroute link split")
    }
}

/// The initiator's state between sending the init and receiving the response.
pub struct Initiator {
    state: SymmetricState,
    e: Ephemeral,
    /// Our session index, which the responder's packets carry.
    pub sender_index: u32,
    /// The responder's static key.
    pub remote: PublicKey,
}

/// A handshake timestamp: seconds and nanoseconds, big endian (byte order is time order).
pub type Timestamp = [u8; TIMESTAMP_LEN];

/// The timestamp of `nanos` nanoseconds since the Unix epoch.
pub fn timestamp(nanos: u128) -> Timestamp {
    let mut t = [0u8; TIMESTAMP_LEN];
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    t[..8].copy_from_slice(&secs.to_be_bytes());
    t[8..].copy_from_slice(&((nanos % 1_000_000_000) as u32).to_be_bytes());
    t
}

/// Where handshake timestamps come from: the wall clock the driver read when the node was
/// made, advanced by the monotonic `now` the node is given (the protocol never reads a clock).
/// Monotonic within a run; across restarts as far as the wall clock is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    unix_ns: u128,
    anchor: std::time::Instant,
}

impl Clock {
    /// A clock reading `unix_ns` (nanoseconds since the Unix epoch) at `anchor`.
    pub fn new(unix_ns: u128, anchor: std::time::Instant) -> Self {
        Clock { unix_ns, anchor }
    }

    /// The timestamp at `now`.
    pub fn at(&self, now: std::time::Instant) -> Timestamp {
        timestamp(self.unix_ns + now.saturating_duration_since(self.anchor).as_nanos())
    }
}

/// Builds a HandshakeInit packet towards `remote` under `prologue` ([`LINK_PROLOGUE`] or
/// [`SESSION_PROLOGUE`]); `slot` is the initiator's link slot (0 for sessions); `ts` the
/// initiator's clock. The two MACs at its end are left zero.
pub fn initiate(
    prologue: &[u8],
    rng: &mut impl CryptoRngCore,
    local: &SecretKey,
    remote: &PublicKey,
    sender_index: u32,
    slot: u8,
    ts: Timestamp,
) -> (Initiator, Vec<u8>) {
    let mut st = SymmetricState::new(prologue, remote);
    let e = Ephemeral::generate(rng);
    let e_pub = e.public_bytes();
    let mut pkt = Vec::with_capacity(HANDSHAKE_INIT_LEN);
    pkt.extend_from_slice(&[wire::VERSION << 4 | wire::TYPE_HANDSHAKE_INIT, slot, 0, 0]);
    pkt.extend_from_slice(&sender_index.to_be_bytes());
    pkt.extend_from_slice(&e_pub);
    st.mix_hash(&e_pub);
    st.mix_hash(&index_and_slot(sender_index, slot));
    let k = st.mix_key(&e.dh(remote));
    st.encrypt_and_hash(&k, &local.public_key().to_bytes(), &mut pkt);
    let k = st.mix_key(&dh_static(local, remote));
    st.encrypt_and_hash(&k, &ts, &mut pkt);
    pkt.extend_from_slice(&[0u8; 2 * MAC_LEN]);
    debug_assert_eq!(pkt.len(), HANDSHAKE_INIT_LEN);
    (Initiator { state: st, e, sender_index, remote: *remote }, pkt)
}

/// What the init's hash binds besides the ephemeral key: the sender index and the link slot,
/// so neither can be altered in flight.
fn index_and_slot(sender_index: u32, slot: u8) -> [u8; 5] {
    let i = sender_index.to_be_bytes();
    [i[0], i[1], i[2], i[3], slot]
}

/// What the responder learns from a valid init.
pub struct Responded {
    /// The initiator's static key (authenticated by the handshake).
    pub initiator: PublicKey,
    /// The initiator's session index (our packets to it carry it).
    pub initiator_index: u32,
    /// The initiator's link slot (its local interface): a neighbour's links over different
    /// radios are different links.
    pub slot: u8,
    /// The initiator's timestamp (authenticated).
    pub timestamp: Timestamp,
    /// The response to send.
    pub packet: Vec<u8>,
    /// The first epoch's keys.
    pub keys: EpochKeys,
}

/// Processes a HandshakeInit addressed to `local` under `prologue` and builds the response.
pub fn respond(
    prologue: &[u8],
    rng: &mut impl CryptoRngCore,
    local: &SecretKey,
    init: &HandshakeInit<'_>,
    responder_index: u32,
) -> Result<Responded, HandshakeError> {
    let mut st = SymmetricState::new(prologue, &local.public_key());
    let re = PublicKey::from_bytes(init.ephemeral).map_err(|_| HandshakeError::BadKey)?;
    st.mix_hash(init.ephemeral);
    st.mix_hash(&index_and_slot(init.sender_index, init.slot));
    let k = st.mix_key(&dh_static(local, &re));
    let s_bytes = st.decrypt_and_hash(&k, &init.enc_static[..])?;
    debug_assert_eq!(s_bytes.len(), ENC_STATIC_LEN - crypto::TAG_LEN);
    let rs = PublicKey::from_bytes(&s_bytes).map_err(|_| HandshakeError::BadKey)?;
    let k = st.mix_key(&dh_static(local, &rs));
    let ts_bytes = st.decrypt_and_hash(&k, &init.enc_timestamp[..])?;
    let mut timestamp = [0u8; TIMESTAMP_LEN];
    timestamp.copy_from_slice(&ts_bytes);

    let e = Ephemeral::generate(rng);
    let e_pub = e.public_bytes();
    let mut pkt = Vec::with_capacity(HANDSHAKE_RESP_LEN);
    pkt.extend_from_slice(&[wire::VERSION << 4 | wire::TYPE_HANDSHAKE_RESP, 0, 0, 0]);
    pkt.extend_from_slice(&responder_index.to_be_bytes());
    pkt.extend_from_slice(&init.sender_index.to_be_bytes());
    pkt.extend_from_slice(&e_pub);
    st.mix_hash(&e_pub);
    st.mix_hash(&pkt[4..12]);
    st.mix_key(&e.dh(&re));
    let k = st.mix_key(&e.dh(&rs));
    st.encrypt_and_hash(&k, &[], &mut pkt);
    debug_assert_eq!(pkt.len(), HANDSHAKE_RESP_LEN);
    let [i2r, r2i, chain] = st.split();
    Ok(Responded {
        initiator: rs,
        initiator_index: init.sender_index,
        slot: init.slot,
        timestamp,
        packet: pkt,
        keys: EpochKeys { send: r2i, recv: i2r, chain },
    })
}

impl Initiator {
    /// Processes the response; on success returns the first epoch's keys.
    pub fn finish(mut self, local: &SecretKey, resp: &HandshakeResp<'_>) -> Result<EpochKeys, HandshakeError> {
        let re = PublicKey::from_bytes(resp.ephemeral).map_err(|_| HandshakeError::BadKey)?;
        self.state.mix_hash(resp.ephemeral);
        let mut idx = [0u8; 8];
        idx[..4].copy_from_slice(&resp.sender_index.to_be_bytes());
        idx[4..].copy_from_slice(&resp.receiver_index.to_be_bytes());
        self.state.mix_hash(&idx);
        self.state.mix_key(&self.e.dh(&re));
        let k = self.state.mix_key(&dh_static(local, &re));
        self.state.decrypt_and_hash(&k, &resp.enc_payload[..])?;
        let [i2r, r2i, chain] = self.state.split();
        Ok(EpochKeys { send: i2r, recv: r2i, chain })
    }
}

/// Derives the next epoch's keys from the previous chaining key and a fresh ephemeral DH, for the
/// side that started the rekey (`initiator == true`) or the one that answered.
pub fn rekey(chain: &Secret32, dh: &Secret32, initiator: bool) -> EpochKeys {
    let [i2r, r2i, chain] = hkdf::<3>(chain, &dh[..], b"skyroute link rekey");
    if initiator {
        EpochKeys { send: i2r, recv: r2i, chain }
    } else {
        EpochKeys { send: r2i, recv: i2r, chain }
    }
}

/// Parses a compressed ephemeral key from a rekey frame.
pub fn parse_ephemeral(bytes: &[u8; PUBLIC_KEY_LEN]) -> Result<PublicKey, HandshakeError> {
    PublicKey::from_bytes(bytes).map_err(|_| HandshakeError::BadKey)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Packet;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn both_sides_derive_matching_keys_and_tampering_fails() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        let a = SecretKey::generate(&mut rng);
        let b = SecretKey::generate(&mut rng);
        let (ini, init_pkt) =
            initiate(LINK_PROLOGUE, &mut rng, &a, &b.public_key(), 11, 0, timestamp(1_234_567_890_123));
        let Ok(Packet::HandshakeInit(init)) = Packet::parse(&init_pkt) else { panic!() };
        let r = respond(LINK_PROLOGUE, &mut rng, &b, &init, 22).unwrap();
        assert_eq!(r.initiator, a.public_key());
        assert_eq!(r.timestamp, timestamp(1_234_567_890_123));
        assert!(timestamp(1_234_567_890_123) < timestamp(1_234_567_890_124));
        assert!(timestamp(999_999_999) < timestamp(1_000_000_000));
        let Ok(Packet::HandshakeResp(resp)) = Packet::parse(&r.packet) else { panic!() };
        assert_eq!((resp.sender_index, resp.receiver_index), (22, 11));
        let ka = ini.finish(&a, &resp).unwrap();
        assert_eq!(*ka.send, *r.keys.recv);
        assert_eq!(*ka.recv, *r.keys.send);
        assert_eq!(*ka.chain, *r.keys.chain);

        // A third party's key cannot answer: the responder needs b's secret.
        let c = SecretKey::generate(&mut rng);
        assert!(respond(LINK_PROLOGUE, &mut rng, &c, &init, 5).is_err());
        // A flipped index is detected.
        let mut bad = init_pkt.clone();
        bad[5] ^= 1;
        let Ok(Packet::HandshakeInit(bad_init)) = Packet::parse(&bad) else { panic!() };
        assert_eq!(respond(LINK_PROLOGUE, &mut rng, &b, &bad_init, 5).err(), Some(HandshakeError::Decrypt));
    }
}
