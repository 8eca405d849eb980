//! ChaCha20-Poly1305 (RFC 8439) with two interchangeable backends: `ring` (the hot path) and a
//! pure-Rust one (`chacha20` + `poly1305` via the `chacha20poly1305` crate) for targets without a
//! C compiler. Both produce identical bytes; a test checks that each opens the other's output.
//!
//! Nonces are never chosen by callers: a nonce is the 64-bit packet counter, little endian, after
//! four zero bytes. Every key is used with each counter value at most once (the link and route
//! layers own the counters and never reset them under the same key).

use zeroize::Zeroizing;

/// Bytes in an AEAD key.
pub const KEY_LEN: usize = 32;
/// Bytes in an AEAD tag (Poly1305).
pub const TAG_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
/// Opening failed: the tag does not match (forged, corrupted or a wrong key).
pub struct AeadError;

/// Which implementation seals and opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    #[cfg(feature = "ring")]
    /// ring's ChaCha20-Poly1305 (assembly; the hot path's default).
    Ring,
    #[cfg(feature = "soft-aead")]
    /// The pure-Rust ChaCha20-Poly1305 (RustCrypto): for targets without a C compiler.
    Soft,
}

impl Default for Backend {
    fn default() -> Self {
        #[cfg(feature = "ring")]
        return Backend::Ring;
        #[cfg(all(not(feature = "ring"), feature = "soft-aead"))]
        return Backend::Soft;
    }
}

#[cfg(not(any(feature = "ring", feature = "soft-aead")))]
compile_error!("skyroute-proto needs an AEAD backend: enable feature `ring` or `soft-aead`");

enum Inner {
    #[cfg(feature = "ring")]
    Ring(ring::aead::LessSafeKey),
    #[cfg(feature = "soft-aead")]
    Soft(Box<chacha20poly1305::ChaCha20Poly1305>),
}

/// One direction's ChaCha20-Poly1305 key.
///
/// Our own copies of key bytes are zeroized; the soft backend zeroizes its state on drop; `ring`
/// keeps its own copy inside `LessSafeKey`, which it does not wipe (noted in docs/limitations.md).
pub struct AeadKey {
    inner: Inner,
}

fn nonce_bytes(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

impl AeadKey {
    /// A cipher under `key` with the default backend (ring when built, else the pure-Rust one).
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        Self::with_backend(key, Backend::default())
    }

    /// A cipher under `key` with the given backend (tests cross-check the two).
    pub fn with_backend(key: &[u8; KEY_LEN], backend: Backend) -> Self {
        let inner = match backend {
            #[cfg(feature = "ring")]
            Backend::Ring => {
                // A 32-byte key is always accepted by ring's CHACHA20_POLY1305.
                let unbound = match ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, key) {
                    Ok(k) => k,
                    Err(_) => unreachable!("CHACHA20_POLY1305 takes 32-byte keys"),
                };
                Inner::Ring(ring::aead::LessSafeKey::new(unbound))
            }
            #[cfg(feature = "soft-aead")]
            Backend::Soft => {
                use chacha20poly1305::KeyInit;
                Inner::Soft(Box::new(chacha20poly1305::ChaCha20Poly1305::new(key.into())))
            }
        };
        AeadKey { inner }
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal(&self, counter: u64, aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let nonce = nonce_bytes(counter);
        match &self.inner {
            #[cfg(feature = "ring")]
            Inner::Ring(k) => {
                let n = ring::aead::Nonce::assume_unique_for_key(nonce);
                match k.seal_in_place_separate_tag(n, ring::aead::Aad::from(aad), buf) {
                    Ok(tag) => {
                        let mut t = [0u8; TAG_LEN];
                        t.copy_from_slice(tag.as_ref());
                        t
                    }
                    // ring only fails for inputs longer than 256 GiB.
                    Err(_) => unreachable!("ring seal failed on a bounded buffer"),
                }
            }
            #[cfg(feature = "soft-aead")]
            Inner::Soft(k) => {
                use chacha20poly1305::AeadInPlace;
                match k.encrypt_in_place_detached((&nonce).into(), aad, buf) {
                    Ok(tag) => tag.into(),
                    Err(_) => unreachable!("chacha20poly1305 seal failed on a bounded buffer"),
                }
            }
        }
    }

    /// Decrypts `buf` (ciphertext followed by the tag) in place; returns the plaintext length.
    pub fn open(&self, counter: u64, aad: &[u8], buf: &mut [u8]) -> Result<usize, AeadError> {
        if buf.len() < TAG_LEN {
            return Err(AeadError);
        }
        let nonce = nonce_bytes(counter);
        match &self.inner {
            #[cfg(feature = "ring")]
            Inner::Ring(k) => {
                let n = ring::aead::Nonce::assume_unique_for_key(nonce);
                k.open_in_place(n, ring::aead::Aad::from(aad), buf).map(|p| p.len()).map_err(|_| AeadError)
            }
            #[cfg(feature = "soft-aead")]
            Inner::Soft(k) => {
                use chacha20poly1305::AeadInPlace;
                let (ct, tag) = buf.split_at_mut(buf.len() - TAG_LEN);
                let tag = chacha20poly1305::Tag::clone_from_slice(tag);
                k.decrypt_in_place_detached((&nonce).into(), aad, ct, &tag).map(|_| ct.len()).map_err(|_| AeadError)
            }
        }
    }

    /// Appends a sealed copy of `plaintext` to `out` (convenience for control messages).
    pub fn seal_to_vec(&self, counter: u64, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self.seal(counter, aad, &mut out[start..]);
        out.extend_from_slice(&tag);
    }

    /// Opens `sealed` into a new buffer that is wiped on drop.
    pub fn open_to_vec(&self, counter: u64, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, AeadError> {
        let mut buf = Zeroizing::new(sealed.to_vec());
        let n = self.open(counter, aad, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
}

#[cfg(all(test, feature = "ring", feature = "soft-aead"))]
mod cross_backend {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ring_and_soft_agree(key in any::<[u8; 32]>(), counter in any::<u64>(),
                               aad in proptest::collection::vec(any::<u8>(), 0..40),
                               msg in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let ring_key = AeadKey::with_backend(&key, Backend::Ring);
            let soft_key = AeadKey::with_backend(&key, Backend::Soft);
            let mut a = Vec::new();
            let mut b = Vec::new();
            ring_key.seal_to_vec(counter, &aad, &msg, &mut a);
            soft_key.seal_to_vec(counter, &aad, &msg, &mut b);
            prop_assert_eq!(&a, &b, "same bytes from both backends");
            prop_assert_eq!(&soft_key.open_to_vec(counter, &aad, &a).unwrap()[..], &msg[..]);
            prop_assert_eq!(&ring_key.open_to_vec(counter, &aad, &b).unwrap()[..], &msg[..]);
            let mut bad = a.clone();
            bad[0] ^= 1;
            prop_assert!(soft_key.open_to_vec(counter, &aad, &bad).is_err());
            prop_assert!(ring_key.open_to_vec(counter, &aad, &bad).is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let key = [7u8; 32];
        let k = AeadKey::new(&key);
        let mut out = Vec::new();
        k.seal_to_vec(5, b"hdr", b"hello world", &mut out);
        assert_eq!(out.len(), 11 + TAG_LEN);
        assert_eq!(&k.open_to_vec(5, b"hdr", &out).unwrap()[..], b"hello world");
        assert!(k.open_to_vec(6, b"hdr", &out).is_err(), "other nonce");
        assert!(k.open_to_vec(5, b"hdx", &out).is_err(), "other aad");
        assert!(k.open_to_vec(5, b"hdr", &out[..10]).is_err(), "truncated");
    }
}
