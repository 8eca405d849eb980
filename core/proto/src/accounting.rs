//! Bandwidth accounting (seed: "incentives: payment protocol"): what a route's source owes
//! each hop for the traffic it carried, in signed cumulative statements that an escrow can
//! settle without learning who the source is.
//!
//! Every party of a route uses a pseudonymous key made for that route alone (never its node
//! identity), so a statement links neither the source's nor a hop's node key or address to
//! the traffic. A hop counts the bytes it carried and periodically sends the source a
//! [`Claim`] (cumulative bytes, its price per MiB, signed by the hop's route key). The source
//! checks it against what it sent itself and answers with a [`Receipt`] (cumulative bytes and
//! the cumulative amount owed, signed by the source's route key), which the hop presents to
//! the escrow. Cumulative figures make loss and reordering harmless: a newer statement
//! replaces an older one, and an older or equal one is refused as a replay. A hop that stays
//! unpaid beyond its allowance for longer than its grace period applies its [`Policy`].
//!
//! Sans-IO like the rest: fed statements and `now`, it returns statements and verdicts.

use std::time::{Duration, Instant};

use crate::forward::Class;
use crate::identity::{PublicKey, SecretKey, PUBLIC_KEY_LEN, SIGNATURE_LEN};

/// Bytes in the unit prices are quoted per.
pub const MIB: u64 = 1 << 20;
/// Encoded sizes.
pub const CLAIM_LEN: usize = 1 + 2 * PUBLIC_KEY_LEN + 8 + 4 + SIGNATURE_LEN;
/// Bytes in an encoded receipt.
pub const RECEIPT_LEN: usize = 1 + 2 * PUBLIC_KEY_LEN + 8 + 8 + SIGNATURE_LEN;

const CLAIM_TAG: u8 = 1;
const RECEIPT_TAG: u8 = 2;
const CLAIM_LABEL: &[u8] = b"skyroute claim v1";
const RECEIPT_LABEL: &[u8] = b"skyroute receipt v1";

/// Why a statement was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum ReceiptError {
    #[error("malformed statement")]
    /// Not a claim or receipt encoding.
    Malformed,
    #[error("signature does not verify")]
    /// The signature does not verify under the signer's route key.
    BadSignature,
    #[error("for another route key")]
    /// Names a route key other than ours.
    WrongParty,
    #[error("not newer than one already taken (replay)")]
    /// Not newer than one already taken.
    Replayed,
    #[error("smaller than one already taken")]
    /// Counts less than one already taken.
    Decreasing,
    #[error("claims more than was sent")]
    /// Claims more bytes than the source sent (beyond the tolerance).
    OverClaim,
    #[error("price above what the source accepts, or changed")]
    /// A price above the source's limit, or different from the one agreed.
    Price,
    #[error("pays less than the bytes at the agreed price")]
    /// Pays less than the receipted bytes at the agreed price.
    Underpaid,
}

impl ReceiptError {
    /// Every reason, in the order status reports them.
    pub const ALL: [ReceiptError; 8] = [
        ReceiptError::Malformed,
        ReceiptError::BadSignature,
        ReceiptError::WrongParty,
        ReceiptError::Replayed,
        ReceiptError::Decreasing,
        ReceiptError::OverClaim,
        ReceiptError::Price,
        ReceiptError::Underpaid,
    ];

    /// The reason's stable name (status JSON keys).
    pub fn name(self) -> &'static str {
        match self {
            ReceiptError::Malformed => "malformed",
            ReceiptError::BadSignature => "bad_signature",
            ReceiptError::WrongParty => "wrong_party",
            ReceiptError::Replayed => "replayed",
            ReceiptError::Decreasing => "decreasing",
            ReceiptError::OverClaim => "over_claim",
            ReceiptError::Price => "price",
            ReceiptError::Underpaid => "underpaid",
        }
    }
}

/// Refused statements, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refused([u64; 8]);

impl Refused {
    /// Counts one refusal.
    pub fn add(&mut self, e: ReceiptError) {
        self.0[e as usize] += 1;
    }

    /// Refusals for `e`.
    pub fn get(&self, e: ReceiptError) -> u64 {
        self.0[e as usize]
    }

    /// Refusals for every reason.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Each reason with its count.
    pub fn iter(&self) -> impl Iterator<Item = (ReceiptError, u64)> + '_ {
        ReceiptError::ALL.into_iter().map(|e| (e, self.get(e))).filter(|(_, n)| *n > 0)
    }
}

/// The amount owed for `bytes` at `price_per_mib` (in the smallest unit, rounded down).
pub fn amount(bytes: u64, price_per_mib: u32) -> u64 {
    (bytes as u128 * price_per_mib as u128 / MIB as u128).min(u64::MAX as u128) as u64
}

/// A hop's claim on a route's source: `bytes` carried so far at `price_per_mib`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The source's route key.
    pub payer: PublicKey,
    /// The hop's route key (which signs).
    pub payee: PublicKey,
    /// Bytes carried on the route so far (cumulative).
    pub bytes: u64,
    /// The hop's price, in the escrow's smallest unit per MiB.
    pub price_per_mib: u32,
    /// The payee's signature over the claim.
    pub signature: [u8; SIGNATURE_LEN],
}

/// The source's receipt: it owes `payee` `amount` for `bytes` (both cumulative).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The source's route key (which signs).
    pub payer: PublicKey,
    /// The hop's route key (which the escrow pays).
    pub payee: PublicKey,
    /// Bytes receipted (cumulative).
    pub bytes: u64,
    /// What the receipt pays in total (cumulative), in the escrow's smallest unit.
    pub amount: u64,
    /// The payer's signature over the receipt.
    pub signature: [u8; SIGNATURE_LEN],
}

fn body(label: &[u8], payer: &PublicKey, payee: &PublicKey, a: u64, b: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(label.len() + 2 * PUBLIC_KEY_LEN + 16);
    m.extend_from_slice(label);
    m.extend_from_slice(&payer.to_bytes());
    m.extend_from_slice(&payee.to_bytes());
    m.extend_from_slice(&a.to_be_bytes());
    m.extend_from_slice(b);
    m
}

fn keys(b: &[u8]) -> Result<(PublicKey, PublicKey), ReceiptError> {
    let payer = PublicKey::from_bytes(&b[1..1 + PUBLIC_KEY_LEN]).map_err(|_| ReceiptError::Malformed)?;
    let payee =
        PublicKey::from_bytes(&b[1 + PUBLIC_KEY_LEN..1 + 2 * PUBLIC_KEY_LEN]).map_err(|_| ReceiptError::Malformed)?;
    Ok((payer, payee))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

impl Claim {
    /// A claim for `bytes` at `price_per_mib`, signed by the hop's route key.
    pub fn sign(hop: &SecretKey, payer: PublicKey, bytes: u64, price_per_mib: u32) -> Claim {
        let payee = hop.public_key();
        let signature = hop.sign(&body(CLAIM_LABEL, &payer, &payee, bytes, &price_per_mib.to_be_bytes()));
        Claim { payer, payee, bytes, price_per_mib, signature }
    }

    /// Checks the payee's signature.
    pub fn verify(&self) -> Result<(), ReceiptError> {
        let m = body(CLAIM_LABEL, &self.payer, &self.payee, self.bytes, &self.price_per_mib.to_be_bytes());
        self.payee.verify(&m, &self.signature).then_some(()).ok_or(ReceiptError::BadSignature)
    }

    /// The claim's wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(CLAIM_LEN);
        b.push(CLAIM_TAG);
        b.extend_from_slice(&self.payer.to_bytes());
        b.extend_from_slice(&self.payee.to_bytes());
        b.extend_from_slice(&self.bytes.to_be_bytes());
        b.extend_from_slice(&self.price_per_mib.to_be_bytes());
        b.extend_from_slice(&self.signature);
        b
    }

    /// Parses (no signature check: [`Claim::verify`]).
    pub fn decode(b: &[u8]) -> Result<Claim, ReceiptError> {
        if b.len() != CLAIM_LEN || b[0] != CLAIM_TAG {
            return Err(ReceiptError::Malformed);
        }
        let (payer, payee) = keys(b)?;
        let at = 1 + 2 * PUBLIC_KEY_LEN;
        let mut p = [0u8; 4];
        p.copy_from_slice(&b[at + 8..at + 12]);
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(&b[at + 12..]);
        Ok(Claim { payer, payee, bytes: u64_at(b, at), price_per_mib: u32::from_be_bytes(p), signature })
    }
}

impl Receipt {
    /// A receipt to `payee` for `bytes` and `amount`, signed by the source's route key.
    pub fn sign(source: &SecretKey, payee: PublicKey, bytes: u64, amount: u64) -> Receipt {
        let payer = source.public_key();
        let signature = source.sign(&body(RECEIPT_LABEL, &payer, &payee, bytes, &amount.to_be_bytes()));
        Receipt { payer, payee, bytes, amount, signature }
    }

    /// Checks the payer's signature.
    pub fn verify(&self) -> Result<(), ReceiptError> {
        let m = body(RECEIPT_LABEL, &self.payer, &self.payee, self.bytes, &self.amount.to_be_bytes());
        self.payer.verify(&m, &self.signature).then_some(()).ok_or(ReceiptError::BadSignature)
    }

    /// The receipt's wire encoding (what the escrow settles).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(RECEIPT_LEN);
        b.push(RECEIPT_TAG);
        b.extend_from_slice(&self.payer.to_bytes());
        b.extend_from_slice(&self.payee.to_bytes());
        b.extend_from_slice(&self.bytes.to_be_bytes());
        b.extend_from_slice(&self.amount.to_be_bytes());
        b.extend_from_slice(&self.signature);
        b
    }

    /// Parses (no signature check: [`Receipt::verify`]).
    pub fn decode(b: &[u8]) -> Result<Receipt, ReceiptError> {
        if b.len() != RECEIPT_LEN || b[0] != RECEIPT_TAG {
            return Err(ReceiptError::Malformed);
        }
        let (payer, payee) = keys(b)?;
        let at = 1 + 2 * PUBLIC_KEY_LEN;
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(&b[at + 16..]);
        Ok(Receipt { payer, payee, bytes: u64_at(b, at), amount: u64_at(b, at + 8), signature })
    }
}

/// The source's side of one route: counts what it sent and answers the hops' claims.
pub struct Payer {
    key: SecretKey,
    sent: u64,
    /// Claims may run ahead of the source's count by this much (in flight, framing).
    tolerance: u64,
    max_price_per_mib: u32,
    /// Per hop route key: bytes receipted and the price agreed at the first claim.
    hops: std::collections::BTreeMap<PublicKey, (u64, u32)>,
    /// Claims refused, by reason.
    pub refused: Refused,
}

impl Payer {
    /// `key`: a key made for this route alone.
    pub fn new(key: SecretKey, max_price_per_mib: u32, tolerance: u64) -> Payer {
        Payer { key, sent: 0, tolerance, max_price_per_mib, hops: Default::default(), refused: Refused::default() }
    }

    /// The source's route key for this route (hops claim against it).
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// Bytes the source put on the route.
    pub fn count_sent(&mut self, bytes: u64) {
        self.sent = self.sent.saturating_add(bytes);
    }

    /// Bytes the route carried so far as the source counts them (cumulative; never lowers).
    pub fn set_sent(&mut self, total: u64) {
        self.sent = self.sent.max(total);
    }

    /// The newest receipt given to a hop: bytes and amount.
    pub fn receipted(&self, payee: &PublicKey) -> Option<(u64, u64)> {
        self.hops.get(payee).map(|(b, p)| (*b, amount(*b, *p)))
    }

    /// Bytes the source sent on the route (what claims are checked against).
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// What the source owes all hops so far.
    pub fn owed(&self) -> u64 {
        self.hops.values().map(|(b, p)| amount(*b, *p)).sum()
    }

    /// A hop's claim: a receipt for it, or why not (counted).
    pub fn on_claim(&mut self, claim: &Claim) -> Result<Receipt, ReceiptError> {
        let r = self.check_claim(claim);
        if let Err(e) = r {
            self.refused.add(e);
        }
        r
    }

    fn check_claim(&mut self, c: &Claim) -> Result<Receipt, ReceiptError> {
        if c.payer != self.key.public_key() {
            return Err(ReceiptError::WrongParty);
        }
        c.verify()?;
        let (done, price) = self.hops.get(&c.payee).copied().unwrap_or((0, c.price_per_mib));
        if c.price_per_mib > self.max_price_per_mib || c.price_per_mib != price {
            return Err(ReceiptError::Price);
        }
        if c.bytes > self.sent.saturating_add(self.tolerance) {
            return Err(ReceiptError::OverClaim);
        }
        if c.bytes < done {
            return Err(ReceiptError::Decreasing);
        }
        if c.bytes == done && self.hops.contains_key(&c.payee) {
            return Err(ReceiptError::Replayed);
        }
        self.hops.insert(c.payee, (c.bytes, price));
        Ok(Receipt::sign(&self.key, c.payee, c.bytes, amount(c.bytes, price)))
    }
}

/// What a hop does about a route whose source does not pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Keep forwarding (count only).
    Ignore,
    /// Forward the route's traffic at a reduced rate.
    Throttle,
    /// Tear the route down.
    Drop,
}

/// The verdict on a route at a hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Paid up, or within its allowance.
    Paid,
    /// Unpaid beyond the allowance and grace: forward at the throttled window only.
    Throttle,
    /// Unpaid beyond the allowance and grace: tear the route down.
    Drop,
}

/// A hop's side of one route: counts what it carried, claims it, takes the receipts.
pub struct Payee {
    key: SecretKey,
    /// The source's route key, once the source made itself known.
    payer: Option<PublicKey>,
    price_per_mib: u32,
    carried: [u64; 2],
    claimed: u64,
    /// The newest valid receipt (what the escrow settles).
    latest: Option<Receipt>,
    /// Unpaid bytes tolerated, and for how long beyond that.
    allowance: u64,
    grace: Duration,
    policy: Policy,
    unpaid_since: Option<Instant>,
    /// Receipts refused, by reason.
    pub refused: Refused,
}

impl Payee {
    /// `key`: this hop's key for this route alone; `payer`: the source's route key.
    pub fn new(
        key: SecretKey,
        payer: PublicKey,
        price_per_mib: u32,
        allowance: u64,
        grace: Duration,
        policy: Policy,
    ) -> Payee {
        let mut p = Payee::unbound(key, price_per_mib, allowance, grace, policy);
        p.bind(payer);
        p
    }

    /// A hop's side before the source named its route key: it counts, and nothing it carries
    /// is paid until [`Payee::bind`].
    pub fn unbound(key: SecretKey, price_per_mib: u32, allowance: u64, grace: Duration, policy: Policy) -> Payee {
        Payee {
            key,
            payer: None,
            price_per_mib,
            carried: [0; 2],
            claimed: 0,
            latest: None,
            allowance,
            grace,
            policy,
            unpaid_since: None,
            refused: Refused::default(),
        }
    }

    /// The hop's route key for this route (receipts pay it).
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The source's route key (the first one named stays).
    pub fn bind(&mut self, payer: PublicKey) {
        self.payer.get_or_insert(payer);
    }

    /// The source's route key, once it made itself known.
    pub fn payer(&self) -> Option<PublicKey> {
        self.payer
    }

    /// This hop's price per MiB for the route.
    pub fn price_per_mib(&self) -> u32 {
        self.price_per_mib
    }

    /// Signs with this route's payee key (e.g. a settlement request to the escrow).
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.key.sign(message)
    }

    /// Bytes carried so far in `class` (cumulative, as the hop's buffers count them; never
    /// lowers).
    pub fn set_carried(&mut self, class: Class, total: u64) {
        let c = &mut self.carried[class as usize];
        *c = (*c).max(total);
    }

    /// Bytes this hop carried for the route.
    pub fn count(&mut self, class: Class, bytes: u64) {
        let c = &mut self.carried[class as usize];
        *c = c.saturating_add(bytes);
    }

    /// Bytes of `class` carried on the route.
    pub fn carried(&self, class: Class) -> u64 {
        self.carried[class as usize]
    }

    /// Bytes carried, both classes.
    pub fn carried_total(&self) -> u64 {
        self.carried[0].saturating_add(self.carried[1])
    }

    /// Bytes covered by the newest receipt, and what it pays.
    pub fn paid(&self) -> (u64, u64) {
        self.latest.as_ref().map_or((0, 0), |r| (r.bytes, r.amount))
    }

    /// The newest valid receipt (what the escrow settles).
    pub fn latest(&self) -> Option<&Receipt> {
        self.latest.as_ref()
    }

    /// A claim for what was carried since the last one (`None` if nothing new).
    pub fn claim(&mut self) -> Option<Claim> {
        let payer = self.payer?;
        let total = self.carried_total();
        if total <= self.claimed {
            return None;
        }
        self.claimed = total;
        Some(Claim::sign(&self.key, payer, total, self.price_per_mib))
    }

    /// The source's receipt (counted if refused).
    pub fn on_receipt(&mut self, now: Instant, r: &Receipt) -> Result<(), ReceiptError> {
        let res = self.check_receipt(r);
        match res {
            Ok(()) => self.latest = Some(r.clone()),
            Err(e) => self.refused.add(e),
        }
        self.verdict(now);
        res
    }

    fn check_receipt(&self, r: &Receipt) -> Result<(), ReceiptError> {
        if Some(r.payer) != self.payer || r.payee != self.key.public_key() {
            return Err(ReceiptError::WrongParty);
        }
        r.verify()?;
        let (bytes, paid) = self.paid();
        if r.bytes < bytes || r.amount < paid {
            return Err(ReceiptError::Decreasing);
        }
        if self.latest.is_some() && r.bytes == bytes {
            return Err(ReceiptError::Replayed);
        }
        if r.amount < amount(r.bytes, self.price_per_mib) {
            return Err(ReceiptError::Underpaid);
        }
        Ok(())
    }

    /// Whether the route is paid for: unpaid bytes beyond the allowance for longer than the
    /// grace period get the policy.
    pub fn verdict(&mut self, now: Instant) -> Verdict {
        let unpaid = self.carried_total().saturating_sub(self.paid().0);
        if unpaid <= self.allowance {
            self.unpaid_since = None;
            return Verdict::Paid;
        }
        let since = *self.unpaid_since.get_or_insert(now);
        if now.saturating_duration_since(since) < self.grace {
            return Verdict::Paid;
        }
        match self.policy {
            Policy::Ignore => Verdict::Paid,
            Policy::Throttle => Verdict::Throttle,
            Policy::Drop => Verdict::Drop,
        }
    }
}
