//! Bandwidth accounting through its public API: claims and receipts between a route's
//! source and a hop, everything a dishonest party might send refused and counted, the unpaid
//! policy, and the decoders fed random bytes.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use skyroute_proto::accounting::{
    amount, Claim, Payee, Payer, Policy, Receipt, ReceiptError, Verdict, CLAIM_LEN, MIB, RECEIPT_LEN,
};
use skyroute_proto::{Class, SecretKey};

fn key(seed: u64) -> SecretKey {
    SecretKey::generate(&mut ChaCha20Rng::seed_from_u64(seed))
}

const PRICE: u32 = 1_000; // per MiB

fn pair(policy: Policy) -> (Payer, Payee) {
    let payer = Payer::new(key(1), 5_000, 64 * 1024);
    let payee = Payee::new(key(2), payer.public_key(), PRICE, MIB, Duration::from_secs(10), policy);
    (payer, payee)
}

#[test]
fn claims_become_receipts_for_what_was_carried() {
    let (mut src, mut hop) = pair(Policy::Drop);
    let now = Instant::now();
    src.count_sent(10 * MIB);
    hop.count(Class::Bulk, 9 * MIB);
    hop.count(Class::Realtime, MIB);
    let c = hop.claim().unwrap();
    assert_eq!(c.bytes, 10 * MIB);
    assert!(hop.claim().is_none(), "nothing new to claim");
    let r = src.on_claim(&c).unwrap();
    assert_eq!((r.bytes, r.amount), (10 * MIB, 10 * PRICE as u64));
    hop.on_receipt(now, &r).unwrap();
    assert_eq!(hop.paid(), (10 * MIB, 10_000));
    assert_eq!(src.owed(), 10_000);
    // Both statements survive their encodings.
    assert_eq!(Claim::decode(&c.encode()).unwrap(), c);
    assert_eq!(Receipt::decode(&r.encode()).unwrap(), r);
    assert_eq!(amount(MIB / 2, PRICE), 500);
}

#[test]
fn forged_replayed_decreasing_and_over_claiming_statements_are_refused_and_counted() {
    let (mut src, mut hop) = pair(Policy::Drop);
    let now = Instant::now();
    src.count_sent(4 * MIB);
    hop.count(Class::Bulk, 2 * MIB);
    let c1 = hop.claim().unwrap();
    let r1 = src.on_claim(&c1).unwrap();
    // The source: a replayed claim, a forged one, one for another source, one above what it
    // sent, a lower one, one at another price.
    assert_eq!(src.on_claim(&c1), Err(ReceiptError::Replayed));
    let mut forged = c1.clone();
    forged.bytes += 1;
    assert_eq!(src.on_claim(&forged), Err(ReceiptError::BadSignature));
    let elsewhere = Claim::sign(&key(2), key(9).public_key(), MIB, PRICE);
    assert_eq!(src.on_claim(&elsewhere), Err(ReceiptError::WrongParty));
    let greedy = Claim::sign(&key(2), src.public_key(), 8 * MIB, PRICE);
    assert_eq!(src.on_claim(&greedy), Err(ReceiptError::OverClaim));
    let lower = Claim::sign(&key(2), src.public_key(), MIB, PRICE);
    assert_eq!(src.on_claim(&lower), Err(ReceiptError::Decreasing));
    let dearer = Claim::sign(&key(2), src.public_key(), 3 * MIB, PRICE * 2);
    assert_eq!(src.on_claim(&dearer), Err(ReceiptError::Price));
    let s = &src.refused;
    assert_eq!(s.total(), 6);
    for e in [
        ReceiptError::Replayed,
        ReceiptError::BadSignature,
        ReceiptError::WrongParty,
        ReceiptError::OverClaim,
        ReceiptError::Decreasing,
        ReceiptError::Price,
    ] {
        assert_eq!(s.get(e), 1, "{e:?}");
    }
    // The hop: the good receipt, then a replay, a forgery, one for another hop, a lower one
    // and one that pays less than the price.
    hop.on_receipt(now, &r1).unwrap();
    assert_eq!(hop.on_receipt(now, &r1), Err(ReceiptError::Replayed));
    let mut forged = r1.clone();
    forged.amount *= 2;
    assert_eq!(hop.on_receipt(now, &forged), Err(ReceiptError::BadSignature));
    let other = Receipt::sign(&key(1), key(7).public_key(), 3 * MIB, 3 * PRICE as u64);
    assert_eq!(hop.on_receipt(now, &other), Err(ReceiptError::WrongParty));
    let lower = Receipt::sign(&key(1), hop.public_key(), MIB, PRICE as u64);
    assert_eq!(hop.on_receipt(now, &lower), Err(ReceiptError::Decreasing));
    let cheap = Receipt::sign(&key(1), hop.public_key(), 3 * MIB, 2 * PRICE as u64 + 1);
    assert_eq!(hop.on_receipt(now, &cheap), Err(ReceiptError::Underpaid));
    // More bytes for less money than already receipted (after an overpaying receipt).
    let generous = Receipt::sign(&key(1), hop.public_key(), 3 * MIB, 100 * PRICE as u64);
    hop.on_receipt(now, &generous).unwrap();
    let less = Receipt::sign(&key(1), hop.public_key(), 4 * MIB, 4 * PRICE as u64);
    assert_eq!(hop.on_receipt(now, &less), Err(ReceiptError::Decreasing));
    assert_eq!(hop.refused.total(), 6);
    assert_eq!(hop.paid(), (3 * MIB, 100 * PRICE as u64), "only the good receipts count");
}

#[test]
fn an_unpaid_route_gets_the_policy_after_its_grace() {
    for (policy, expect) in
        [(Policy::Drop, Verdict::Drop), (Policy::Throttle, Verdict::Throttle), (Policy::Ignore, Verdict::Paid)]
    {
        let (mut src, mut hop) = pair(policy);
        let t0 = Instant::now();
        hop.count(Class::Bulk, 3 * MIB);
        assert_eq!(hop.verdict(t0), Verdict::Paid, "within grace");
        assert_eq!(hop.verdict(t0 + Duration::from_secs(9)), Verdict::Paid);
        assert_eq!(hop.verdict(t0 + Duration::from_secs(11)), expect, "{policy:?}");
        // Paid up to within the allowance: back to normal.
        src.count_sent(3 * MIB);
        let r = src.on_claim(&hop.claim().unwrap()).unwrap();
        hop.on_receipt(t0 + Duration::from_secs(12), &r).unwrap();
        assert_eq!(hop.verdict(t0 + Duration::from_secs(12)), Verdict::Paid);
    }
}

proptest! {
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Claim::decode(&bytes).map(|c| c.verify());
        let _ = Receipt::decode(&bytes).map(|r| r.verify());
    }

    #[test]
    fn full_length_junk_is_refused(mut c in proptest::collection::vec(any::<u8>(), CLAIM_LEN), mut r in proptest::collection::vec(any::<u8>(), RECEIPT_LEN)) {
        c[0] = 1;
        r[0] = 2;
        prop_assert!(Claim::decode(&c).and_then(|c| c.verify()).is_err());
        prop_assert!(Receipt::decode(&r).and_then(|r| r.verify()).is_err());
    }
}
