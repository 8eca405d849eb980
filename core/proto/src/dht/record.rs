//! Signed, expiring node records: what a node publishes about itself (its key, where to reach
//! it, its roles and transit price, the services it offers), checked before anything stores or
//! uses one.

use crate::identity::{Address, PublicKey, SecretKey, PUBLIC_KEY_LEN, SIGNATURE_LEN};
use sha2::{Digest, Sha256};

/// Largest encoded record.
pub const MAX_RECORD: usize = 1024;
/// Longest a record may live.
pub const MAX_TTL_SECS: u32 = 24 * 3600;
/// How far in the future a record's issue time may be (clock skew).
pub const MAX_SKEW_SECS: u64 = 600;
/// Addresses and services per record, and the length of one address.
pub const MAX_ADDRS: usize = 4;
/// Services per record.
pub const MAX_SERVICES: usize = 8;
/// Bytes in one transport address.
pub const MAX_ADDR_LEN: usize = 64;
/// Guards a node may name.
pub const MAX_GUARDS: usize = 4;

/// Roles a node may advertise.
pub const ROLE_ANCHOR: u8 = 1;
/// Role bit: a VPN gateway to the internet.
pub const ROLE_GATEWAY: u8 = 2;
/// Role bit: a guard other nodes may hide behind.
pub const ROLE_GUARD: u8 = 4;

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The node's key (which signs).
    pub key: PublicKey,
    /// Higher replaces lower; the same or lower is a replay.
    pub seq: u64,
    /// Unix seconds when issued, and how long it is valid.
    pub issued: u64,
    /// Seconds it is valid after `issued`.
    pub ttl: u32,
    /// Transport addresses ("udp://192.0.2.1:7070", ...).
    pub addrs: Vec<String>,
    /// Role bits (`ROLE_*`).
    pub roles: u8,
    /// Advertised transit cost (price units per MiB; 0: free).
    pub cost: u32,
    /// Service keys (hashes) this node offers, e.g. "syncs blockchain X".
    pub services: Vec<[u8; 32]>,
    /// The node's guards (seed: "guard nodes"): sources must enter it through one of them,
    /// so its key is never tied to its own links. A guarded node publishes no addresses.
    pub guards: Vec<PublicKey>,
}

/// A record and its signature, as stored and sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRecord {
    /// The record.
    pub record: Record,
    /// The node's signature over the record's encoding.
    pub signature: [u8; SIGNATURE_LEN],
}

/// Why a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("malformed record")]
    /// Does not parse.
    Malformed,
    #[error("record larger than {MAX_RECORD} bytes or over its limits")]
    /// Larger than a record may be, or over a list's limit.
    TooLarge,
    #[error("bad signature")]
    /// The signature does not verify.
    BadSignature,
    #[error("expired")]
    /// Past its time to live.
    Expired,
    #[error("issued in the future")]
    /// Issued further in the future than the allowed clock skew.
    FromFuture,
    #[error("an older or equal sequence number than the record held (replay)")]
    /// Not newer than the record held (a replay).
    Stale,
    #[error("the sender asks more than its request rate")]
    /// A request over its sender's (or the node's) request rate: dropped unanswered.
    RateLimited,
}

/// The DHT key of a service name (the 32-byte hash records list, and where they are stored).
pub fn service_key(name: &str) -> [u8; 32] {
    Sha256::digest(format!("skyroute service {name}").as_bytes()).into()
}

/// The DHT address a service key is stored at.
pub fn service_address(service: &[u8; 32]) -> Address {
    let mut a = [0u8; 20];
    a.copy_from_slice(&service[..20]);
    Address(a)
}

impl Record {
    /// The signed bytes (everything but the signature).
    fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(&self.key.to_bytes());
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&self.issued.to_be_bytes());
        b.extend_from_slice(&self.ttl.to_be_bytes());
        b.push(self.roles);
        b.extend_from_slice(&self.cost.to_be_bytes());
        b.push(self.addrs.len() as u8);
        for a in &self.addrs {
            b.push(a.len() as u8);
            b.extend_from_slice(a.as_bytes());
        }
        b.push(self.services.len() as u8);
        for s in &self.services {
            b.extend_from_slice(s);
        }
        b.push(self.guards.len() as u8);
        for g in &self.guards {
            b.extend_from_slice(&g.to_bytes());
        }
        b
    }

    fn check_limits(&self) -> Result<(), RecordError> {
        if self.addrs.len() > MAX_ADDRS
            || self.services.len() > MAX_SERVICES
            || self.guards.len() > MAX_GUARDS
            || self.guards.contains(&self.key)
            || self.addrs.iter().any(|a| a.len() > MAX_ADDR_LEN)
            || self.ttl > MAX_TTL_SECS
        {
            return Err(RecordError::TooLarge);
        }
        Ok(())
    }

    /// Signs the record with the node's key (which must be `self.key`'s).
    pub fn sign(self, secret: &SecretKey) -> Result<SignedRecord, RecordError> {
        self.check_limits()?;
        if secret.public_key() != self.key {
            return Err(RecordError::BadSignature);
        }
        let signature = secret.sign(&self.body());
        Ok(SignedRecord { record: self, signature })
    }
}

impl SignedRecord {
    /// The record's wire encoding (what is signed).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.record.body();
        b.extend_from_slice(&self.signature);
        b
    }

    /// Parses a record (no signature or time check: see [`SignedRecord::verify`]).
    pub fn decode(bytes: &[u8]) -> Result<(SignedRecord, usize), RecordError> {
        let mut r = Reader { b: bytes, at: 0 };
        let start = r.at;
        let key = r.key()?;
        let seq = u64::from_be_bytes(r.array()?);
        let issued = u64::from_be_bytes(r.array()?);
        let ttl = u32::from_be_bytes(r.array()?);
        let roles = r.take(1)?[0];
        let cost = u32::from_be_bytes(r.array()?);
        let n = r.take(1)?[0] as usize;
        if n > MAX_ADDRS {
            return Err(RecordError::TooLarge);
        }
        let mut addrs = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.take(1)?[0] as usize;
            if len > MAX_ADDR_LEN {
                return Err(RecordError::TooLarge);
            }
            addrs.push(String::from_utf8(r.take(len)?.to_vec()).map_err(|_| RecordError::Malformed)?);
        }
        let n = r.take(1)?[0] as usize;
        if n > MAX_SERVICES {
            return Err(RecordError::TooLarge);
        }
        let services = (0..n).map(|_| r.array()).collect::<Result<Vec<[u8; 32]>, _>>()?;
        let n = r.take(1)?[0] as usize;
        if n > MAX_GUARDS {
            return Err(RecordError::TooLarge);
        }
        let guards = (0..n).map(|_| r.key()).collect::<Result<Vec<PublicKey>, _>>()?;
        let signature = r.array()?;
        if r.at - start > MAX_RECORD {
            return Err(RecordError::TooLarge);
        }
        let record = Record { key, seq, issued, ttl, addrs, roles, cost, services, guards };
        Ok((SignedRecord { record, signature }, r.at))
    }

    /// Checks the signature, limits and validity at `unix_now` (seconds).
    pub fn verify(&self, unix_now: u64) -> Result<(), RecordError> {
        let r = &self.record;
        r.check_limits()?;
        check_time(r.issued, r.ttl, unix_now)?;
        if !r.key.verify(&r.body(), &self.signature) {
            return Err(RecordError::BadSignature);
        }
        Ok(())
    }

    /// When it expires (unix seconds).
    pub fn expires(&self) -> u64 {
        self.record.issued + self.record.ttl as u64
    }
}

/// A signed statement issued at `issued` (unix seconds) for `ttl` seconds: not from the
/// future beyond the allowed skew, not expired at `unix_now`.
pub(crate) fn check_time(issued: u64, ttl: u32, unix_now: u64) -> Result<(), RecordError> {
    if issued > unix_now + MAX_SKEW_SECS {
        return Err(RecordError::FromFuture);
    }
    if issued + ttl as u64 <= unix_now {
        return Err(RecordError::Expired);
    }
    Ok(())
}

pub(crate) struct Reader<'a> {
    pub b: &'a [u8],
    pub at: usize,
}

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len()).ok_or(RecordError::Malformed)?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    pub fn key(&mut self) -> Result<PublicKey, RecordError> {
        PublicKey::from_bytes(self.take(PUBLIC_KEY_LEN)?).map_err(|_| RecordError::Malformed)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
}
