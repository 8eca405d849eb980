//! The escrow (seed: "incentives: payment protocol"): a third party that holds sources' coins
//! in anonymous accounts and pays hops against the sources' receipts, off-chain.
//!
//! An account is a random id and a secret (its hash is stored): nothing ties it to a node
//! key, and a node may open as many as it likes (a source uses several unlinkable accounts,
//! a relay too). Coins come in through a [`Chain`] (the test [`Faucet`] stands in for a real
//! chain client). The owner authorises route keys to spend from an account; a hop settles a
//! [`Receipt`] of such a key into an account of its own, proving with its route key's
//! signature that the receipt is its own; that first settlement binds the route key to the
//! account, so later receipts of the route (which can only pay that account) need only the
//! payer's signature checked. Receipts are cumulative: the escrow keeps what it
//! paid per (payer, payee) and pays only the difference, so a receipt settled twice pays once
//! and an older one pays nothing. A settlement that the payer's balance cannot cover is
//! refused whole. Balances above the threshold (1 coin) can be withdrawn to an address.
//!
//! State lives in `redb` (an embedded, transactional, crash-safe store): every request is one
//! write transaction, so a process killed at any instant restarts with every request either
//! applied or not.

//!
//! Features: `store` (default) is the escrow itself (redb store and its TCP server); without it
//! the crate is only the settle request a hop sends ([`Settle`], [`settle_message`]), which is
//! all the node library needs.

mod request;
pub use request::*;

#[cfg(feature = "store")]
mod store;
#[cfg(feature = "store")]
pub use store::*;

#[cfg(feature = "store")]
pub mod server;
