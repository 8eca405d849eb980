//! Cryptographic building blocks: secp256k1 ECDH, HKDF-SHA256 chaining, ChaCha20-Poly1305.

pub mod aead;
pub mod replay;

use k256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::identity::{PublicKey, SecretKey, PUBLIC_KEY_LEN};

pub use aead::{AeadError, AeadKey, Backend, KEY_LEN, TAG_LEN};

/// A 32-byte secret (chaining key, derived key) that is wiped when dropped.
pub type Secret32 = Zeroizing<[u8; 32]>;

/// An ephemeral secp256k1 key, used once for one ECDH (handshake, rekey, route hop setup).
pub struct Ephemeral(k256::ecdh::EphemeralSecret);

impl Ephemeral {
    /// A fresh ephemeral key pair from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Ephemeral(k256::ecdh::EphemeralSecret::random(rng))
    }

    /// The ephemeral public key (sent in the handshake).
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_inner(self.0.public_key())
    }

    /// The ephemeral public key, compressed SEC1 bytes.
    pub fn public_bytes(&self) -> [u8; PUBLIC_KEY_LEN] {
        let p = self.0.public_key().to_encoded_point(true);
        let mut out = [0u8; PUBLIC_KEY_LEN];
        out.copy_from_slice(p.as_bytes());
        out
    }

    /// ECDH with `peer`: the shared secret (x coordinate), zeroized on drop.
    pub fn dh(&self, peer: &PublicKey) -> Secret32 {
        let shared = self.0.diffie_hellman(peer.inner());
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(shared.raw_secret_bytes());
        out
    }
}

/// ECDH between a long-term secret and a public key: the x coordinate of `sk * pk`.
pub fn dh_static(sk: &SecretKey, peer: &PublicKey) -> Secret32 {
    let shared = k256::ecdh::diffie_hellman(sk.inner().to_nonzero_scalar(), peer.inner().as_affine());
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(shared.raw_secret_bytes());
    out
}

/// HKDF-SHA256 with `salt` as the chaining key and `ikm` as input; fills `N` 32-byte outputs
/// (the Noise `HKDF(ck, ikm)` function, with `info` for domain separation).
pub fn hkdf<const N: usize>(salt: &[u8; 32], ikm: &[u8], info: &[u8]) -> [Secret32; N] {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut okm = Zeroizing::new(vec![0u8; 32 * N]);
    // N * 32 <= 255 * 32 is the only failure condition, and N is small in every caller.
    if hk.expand(info, &mut okm).is_err() {
        unreachable!("HKDF output length within bounds");
    }
    std::array::from_fn(|i| {
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(&okm[i * 32..(i + 1) * 32]);
        k
    })
}

/// SHA-256 of the concatenation of `parts`.
pub fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn ecdh_agrees_both_ways() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let a = SecretKey::generate(&mut rng);
        let e = Ephemeral::generate(&mut rng);
        assert_eq!(*e.dh(&a.public_key()), *dh_static(&a, &e.public_key()));
        let [k1, k2] = hkdf::<2>(&[0u8; 32], &e.dh(&a.public_key())[..], b"t");
        assert_ne!(*k1, *k2);
    }
}
