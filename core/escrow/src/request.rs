//! What a hop sends the escrow to be paid: the settle request and its signed message. The node
//! library needs only this part (feature `accounting`), not the store.

use serde::{Deserialize, Serialize};
use skyroute_proto::accounting::Receipt;
use skyroute_proto::SecretKey;

/// The smallest units in a coin.
pub const COIN: u64 = 1_000_000;

const SETTLE_LABEL: &[u8] = b"skyroute settle v1";

/// A hop's request to be paid: the receipt, the account to credit, and the payee route key's
/// signature over both (only the receipt's payee can settle it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settle {
    /// The receipt's encoding, hex.
    pub receipt: String,
    pub account: String,
    /// Hex: the payee key's signature over [`settle_message`].
    pub payee_sig: String,
}

/// What the payee signs to settle `receipt` into `account`.
pub fn settle_message(receipt: &[u8], account: &str) -> Vec<u8> {
    [SETTLE_LABEL, account.as_bytes(), receipt].concat()
}

/// Builds a settle request (the hop's side).
pub fn settle_request(payee: &SecretKey, receipt: &Receipt, account: &str) -> Settle {
    let sig = payee.sign(&settle_message(&receipt.encode(), account));
    Settle::signed(receipt, account, &sig)
}

impl Settle {
    /// A settle request from a receipt and the payee's signature over [`settle_message`]
    /// (as `Node::settlements` returns them).
    pub fn signed(receipt: &Receipt, account: &str, payee_sig: &[u8]) -> Settle {
        Settle {
            receipt: hex::encode(receipt.encode()),
            account: account.to_string(),
            payee_sig: hex::encode(payee_sig),
        }
    }
}

/// The outcome of one settlement: what moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    pub paid: u64,
}
