//! Node identity: a secp256k1 key pair; the node address is a hash of the public key.
//!
//! Address = first [`ADDRESS_LEN`] bytes of SHA-256 over the 33-byte SEC1 compressed public key
//! (documented in WIRE.md).

use std::fmt;

use k256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Length of a compressed secp256k1 public key on the wire.
pub const PUBLIC_KEY_LEN: usize = 33;
/// Length of a node address (truncated SHA-256 of the compressed public key).
pub const ADDRESS_LEN: usize = 20;
/// An ECDSA signature: r and s, 32 bytes each.
pub const SIGNATURE_LEN: usize = 64;

const KEY_FILE_HEADER: &str = "skyroute-secret-key-v1";

/// Errors reading or parsing keys.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not a valid compressed secp256k1 public key")]
    /// Not a valid compressed secp256k1 point.
    InvalidPublicKey,
    #[error("not a valid secp256k1 secret key")]
    /// Not a valid secp256k1 scalar (zero or out of range).
    InvalidSecretKey,
    #[error("key file is malformed: {0}")]
    /// A key file that does not parse (what is wrong with it).
    MalformedKeyFile(&'static str),
    #[error("not a valid address (expected {ADDRESS_LEN} bytes of hex)")]
    /// Not 40 hex digits.
    InvalidAddress,
}

/// A node's long-term secret key. Zeroized on drop (k256 does it for the scalar).
#[derive(Clone)]
pub struct SecretKey(k256::SecretKey);

impl SecretKey {
    /// A fresh identity from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        SecretKey(k256::SecretKey::random(rng))
    }

    /// A secret key from its 32 big-endian bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        k256::SecretKey::from_slice(bytes).map(SecretKey).map_err(|_| KeyError::InvalidSecretKey)
    }

    /// The 32 secret bytes, in a buffer that is wiped when dropped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes().into())
    }

    /// A deterministic ECDSA signature (RFC 6979) over SHA-256 of `msg`: 64 bytes (r, s).
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        use k256::ecdsa::signature::Signer;
        let sk = k256::ecdsa::SigningKey::from(&self.0);
        let sig: k256::ecdsa::Signature = sk.sign(msg);
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(&sig.to_bytes());
        out
    }

    /// The public key of this identity.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_inner(self.0.public_key())
    }

    pub(crate) fn inner(&self) -> &k256::SecretKey {
        &self.0
    }

    /// Serialises the key in the key file format (a header line and the hex secret).
    pub fn to_key_file(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{KEY_FILE_HEADER}\n{}\n", hex::encode(*self.to_bytes())))
    }

    /// Parses the key file format written by [`SecretKey::to_key_file`].
    pub fn from_key_file(text: &str) -> Result<Self, KeyError> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(KeyError::MalformedKeyFile("missing header line"));
        }
        let hex_key = lines.next().ok_or(KeyError::MalformedKeyFile("missing key line"))?;
        if lines.next().is_some() {
            return Err(KeyError::MalformedKeyFile("trailing data"));
        }
        let mut raw = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hex_key, raw.as_mut())
            .map_err(|_| KeyError::MalformedKeyFile("key is not 64 hex digits"))?;
        Self::from_bytes(raw.as_ref())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public_key())
    }
}

/// A node's public key (secp256k1), compared and hashed by its compressed encoding, which is
/// kept beside the point (keys are map keys on the packet path; encoding a point per
/// comparison showed in profiles).
#[derive(Clone, Copy)]
pub struct PublicKey {
    key: k256::PublicKey,
    bytes: [u8; PUBLIC_KEY_LEN],
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for PublicKey {}

impl PublicKey {
    /// A public key from its 33 compressed SEC1 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() != PUBLIC_KEY_LEN {
            return Err(KeyError::InvalidPublicKey);
        }
        k256::PublicKey::from_sec1_bytes(bytes).map(PublicKey::from_inner).map_err(|_| KeyError::InvalidPublicKey)
    }

    /// A public key from 66 hex digits (its compressed SEC1 bytes).
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        let mut raw = [0u8; PUBLIC_KEY_LEN];
        hex::decode_to_slice(s.trim(), &mut raw).map_err(|_| KeyError::InvalidPublicKey)?;
        Self::from_bytes(&raw)
    }

    /// The 33-byte SEC1 compressed encoding.
    pub fn to_bytes(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.bytes
    }

    /// Checks an ECDSA signature by this key over `msg` (high-s signatures are refused, so a
    /// signature has one encoding).
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> bool {
        use k256::ecdsa::signature::Verifier;
        let Ok(sig) = k256::ecdsa::Signature::from_slice(signature) else { return false };
        if sig.normalize_s().is_some() {
            return false;
        }
        k256::ecdsa::VerifyingKey::from(&self.key).verify(msg, &sig).is_ok()
    }

    /// The node's address: the hash of its public key (what the DHT and `lookup` use).
    pub fn address(&self) -> Address {
        let digest = Sha256::digest(self.to_bytes());
        let mut a = [0u8; ADDRESS_LEN];
        a.copy_from_slice(&digest[..ADDRESS_LEN]);
        Address(a)
    }

    pub(crate) fn inner(&self) -> &k256::PublicKey {
        &self.key
    }

    pub(crate) fn from_inner(key: k256::PublicKey) -> Self {
        let mut bytes = [0u8; PUBLIC_KEY_LEN];
        bytes.copy_from_slice(key.to_encoded_point(true).as_bytes());
        PublicKey { key, bytes }
    }
}

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state)
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes.cmp(&other.bytes)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.to_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}…)", &hex::encode(self.to_bytes())[..12])
    }
}

/// A node address: a hash of its public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(pub [u8; ADDRESS_LEN]);

impl Address {
    /// An address from 40 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        let mut a = [0u8; ADDRESS_LEN];
        hex::decode_to_slice(s.trim(), &mut a).map_err(|_| KeyError::InvalidAddress)?;
        Ok(Address(a))
    }

    /// Constant-time comparison (addresses are compared against secrets-derived values in places).
    pub fn ct_eq(&self, other: &Address) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn key_file_round_trip_and_errors() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let sk = SecretKey::generate(&mut rng);
        let text = sk.to_key_file();
        let back = SecretKey::from_key_file(&text).unwrap();
        assert_eq!(back.public_key(), sk.public_key());
        assert_eq!(SecretKey::from_key_file("nope").unwrap_err(), KeyError::MalformedKeyFile("missing header line"));
        assert!(matches!(
            SecretKey::from_key_file(&format!("{KEY_FILE_HEADER}\nzz\n")),
            Err(KeyError::MalformedKeyFile(_))
        ));
        let zero = format!("{KEY_FILE_HEADER}\n{}\n", "00".repeat(32));
        assert_eq!(SecretKey::from_key_file(&zero).unwrap_err(), KeyError::InvalidSecretKey);
    }

    #[test]
    fn public_key_and_address_encoding() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let pk = SecretKey::generate(&mut rng).public_key();
        assert_eq!(PublicKey::from_hex(&pk.to_string()).unwrap(), pk);
        let addr = pk.address();
        assert_eq!(Address::from_hex(&addr.to_string()).unwrap(), addr);
        assert_eq!(&addr.0[..], &Sha256::digest(pk.to_bytes())[..ADDRESS_LEN]);
        assert_eq!(PublicKey::from_bytes(&[2u8; 32]), Err(KeyError::InvalidPublicKey));
        assert_eq!(PublicKey::from_bytes(&[9u8; 33]), Err(KeyError::InvalidPublicKey));
    }
}
