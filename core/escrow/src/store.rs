//! The store: anonymous accounts, spenders and what each receipt paid, in redb.

use std::path::Path;

use rand_core::{OsRng, RngCore};
use redb::{Database, ReadableTable, TableDefinition};
use sha2::{Digest, Sha256};
use skyroute_proto::accounting::Receipt;
use skyroute_proto::PublicKey;

use crate::request::{settle_message, Settle, Settled, COIN};
use subtle::ConstantTimeEq;

const ACCOUNTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("accounts");
const SPENDERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("spenders");
const SETTLED: TableDefinition<&[u8], u64> = TableDefinition::new("settled");
const WITHDRAWALS: TableDefinition<u64, &[u8]> = TableDefinition::new("withdrawals");
/// Payee route key -> the account its receipts pay (bound by its first signed settlement).
const PAYEES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("payees");

const ID_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EscrowError {
    #[error("no such account, or a wrong secret")]
    NoAccount,
    #[error("the receipt's payer key is not authorised to spend from any account")]
    UnknownPayer,
    #[error("this key already spends from an account")]
    KeyTaken,
    #[error("this payee key settles into another account")]
    PayeeBound,
    #[error("bad signature")]
    BadSignature,
    #[error("the receipt pays nothing new (settled already, or older)")]
    NothingNew,
    #[error("a newer receipt of the same payer and payee is in this batch")]
    Superseded,
    #[error("the payer's account cannot cover {needed} (balance {balance})")]
    Insufficient { needed: u64, balance: u64 },
    #[error("withdrawals need a balance of at least {threshold} and an amount within it")]
    BelowThreshold { threshold: u64 },
    #[error("the chain refused: {0}")]
    Chain(#[from] ChainError),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("store: {0}")]
    Store(String),
}

impl EscrowError {
    /// A short stable name, for programs (the escrow's JSON answers carry it).
    pub fn code(&self) -> &'static str {
        match self {
            EscrowError::NoAccount => "no_account",
            EscrowError::UnknownPayer => "unknown_payer",
            EscrowError::KeyTaken => "key_taken",
            EscrowError::PayeeBound => "payee_bound",
            EscrowError::BadSignature => "bad_signature",
            EscrowError::NothingNew => "nothing_new",
            EscrowError::Superseded => "superseded",
            EscrowError::Insufficient { .. } => "insufficient",
            EscrowError::BelowThreshold { .. } => "below_threshold",
            EscrowError::Chain(_) => "chain",
            EscrowError::BadRequest(_) => "bad_request",
            EscrowError::Store(_) => "store",
        }
    }
}

impl<E: Into<redb::Error>> From<E> for EscrowError {
    fn from(e: E) -> Self {
        EscrowError::Store(e.into().to_string())
    }
}

/// A chain client's refusal or failure (its own words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChainError(pub String);

/// Where coins come from and go to. A real chain client confirms a deposit on chain and sends
/// withdrawals; the [`Faucet`] does neither.
pub trait Chain: Send + Sync {
    /// Confirms that `amount` was deposited for `account` (returns what to credit).
    fn deposit(&self, account: &str, amount: u64) -> Result<u64, ChainError>;
    /// Sends `amount` to `address`; returns a transaction id.
    fn withdraw(&self, address: &str, amount: u64) -> Result<String, ChainError>;
}

/// Test only: every deposit is confirmed, every withdrawal "sent".
pub struct Faucet;

impl Chain for Faucet {
    fn deposit(&self, _account: &str, amount: u64) -> Result<u64, ChainError> {
        Ok(amount)
    }
    fn withdraw(&self, address: &str, amount: u64) -> Result<String, ChainError> {
        Ok(hex::encode(&Sha256::digest(format!("{address}:{amount}").as_bytes())[..16]))
    }
}

/// A settle request whose signatures checked out.
struct Checked {
    payer: PublicKey,
    payee: PublicKey,
    amount: u64,
    account: Vec<u8>,
    /// The payee's signature was checked (it was not bound to this account yet).
    signed: bool,
}

pub struct Escrow {
    db: Database,
    chain: Box<dyn Chain>,
    threshold: u64,
}

fn parse_id(account: &str) -> Result<Vec<u8>, EscrowError> {
    let b = hex::decode(account).map_err(|_| EscrowError::NoAccount)?;
    if b.len() != ID_LEN {
        return Err(EscrowError::NoAccount);
    }
    Ok(b)
}

fn record(balance: u64, secret_hash: &[u8]) -> Vec<u8> {
    [&balance.to_be_bytes()[..], secret_hash].concat()
}

fn balance_of(rec: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&rec[..8]);
    u64::from_be_bytes(b)
}

impl Escrow {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path, chain: Box<dyn Chain>) -> Result<Escrow, EscrowError> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(ACCOUNTS)?;
        tx.open_table(SPENDERS)?;
        tx.open_table(SETTLED)?;
        tx.open_table(WITHDRAWALS)?;
        tx.open_table(PAYEES)?;
        tx.commit()?;
        Ok(Escrow { db, chain, threshold: COIN })
    }

    /// A new anonymous account: its id and secret (hex). The secret is shown once.
    pub fn open_account(&self) -> Result<(String, String), EscrowError> {
        let mut id = [0u8; ID_LEN];
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut id);
        OsRng.fill_bytes(&mut secret);
        let tx = self.db.begin_write()?;
        tx.open_table(ACCOUNTS)?.insert(&id[..], &record(0, &Sha256::digest(secret))[..])?;
        tx.commit()?;
        Ok((hex::encode(id), hex::encode(secret)))
    }

    /// Checks an account's secret; returns its id bytes.
    fn owner(&self, account: &str, secret: &str) -> Result<Vec<u8>, EscrowError> {
        let id = parse_id(account)?;
        let secret = hex::decode(secret).map_err(|_| EscrowError::NoAccount)?;
        let tx = self.db.begin_read()?;
        let t = tx.open_table(ACCOUNTS)?;
        let rec = t.get(&id[..])?.ok_or(EscrowError::NoAccount)?;
        let hash = Sha256::digest(&secret);
        if !bool::from(rec.value()[8..].ct_eq(&hash[..])) {
            return Err(EscrowError::NoAccount);
        }
        Ok(id)
    }

    /// Credits a deposit the chain confirms.
    pub fn deposit(&self, account: &str, amount: u64) -> Result<u64, EscrowError> {
        let id = parse_id(account)?;
        let credit = self.chain.deposit(account, amount)?;
        let tx = self.db.begin_write()?;
        let balance = {
            let mut t = tx.open_table(ACCOUNTS)?;
            let rec = t.get(&id[..])?.ok_or(EscrowError::NoAccount)?.value().to_vec();
            let balance = balance_of(&rec).checked_add(credit).ok_or(EscrowError::BadRequest("overflow".into()))?;
            t.insert(&id[..], &record(balance, &rec[8..])[..])?;
            balance
        };
        tx.commit()?;
        Ok(balance)
    }

    /// Lets `payer` (a route key) spend from the account.
    pub fn authorize(&self, account: &str, secret: &str, payer: &PublicKey) -> Result<(), EscrowError> {
        let id = self.owner(account, secret)?;
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(SPENDERS)?;
            if t.get(&payer.to_bytes()[..])?.is_some() {
                return Err(EscrowError::KeyTaken);
            }
            t.insert(&payer.to_bytes()[..], &id[..])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The balance (the owner only).
    pub fn balance(&self, account: &str, secret: &str) -> Result<u64, EscrowError> {
        let id = self.owner(account, secret)?;
        let tx = self.db.begin_read()?;
        let t = tx.open_table(ACCOUNTS)?;
        let rec = t.get(&id[..])?.ok_or(EscrowError::NoAccount)?;
        Ok(balance_of(rec.value()))
    }

    /// Withdraws `amount` to `address` when the balance is at least the threshold.
    pub fn withdraw(&self, account: &str, secret: &str, address: &str, amount: u64) -> Result<String, EscrowError> {
        let id = self.owner(account, secret)?;
        if address.is_empty() || address.len() > 128 {
            return Err(EscrowError::BadRequest("address".into()));
        }
        let tx = self.db.begin_write()?;
        let txid = {
            let mut t = tx.open_table(ACCOUNTS)?;
            let rec = t.get(&id[..])?.ok_or(EscrowError::NoAccount)?.value().to_vec();
            let balance = balance_of(&rec);
            if balance < self.threshold || amount == 0 || amount > balance {
                return Err(EscrowError::BelowThreshold { threshold: self.threshold });
            }
            // Sent only if the debit commits below; a real chain client would queue it
            // and send after the commit (at-least-once with its own idempotency key).
            let txid = self.chain.withdraw(address, amount)?;
            t.insert(&id[..], &record(balance - amount, &rec[8..])[..])?;
            let mut w = tx.open_table(WITHDRAWALS)?;
            let n = w.last()?.map_or(0, |(k, _)| k.value() + 1);
            let entry = serde_json::json!({ "to": address, "amount": amount, "txid": txid }).to_string();
            w.insert(n, entry.as_bytes())?;
            txid
        };
        tx.commit()?;
        Ok(txid)
    }

    /// Which requests name the account their payee key is bound to.
    fn bound(&self, parsed: &[Result<Parsed, EscrowError>], keep: &[bool]) -> Result<Vec<bool>, EscrowError> {
        let tx = self.db.begin_read()?;
        let payees = tx.open_table(PAYEES)?;
        let mut out = Vec::with_capacity(parsed.len());
        for (p, k) in parsed.iter().zip(keep) {
            out.push(match (p, k) {
                (Ok(p), true) => {
                    payees.get(&p.receipt.payee.to_bytes()[..])?.is_some_and(|a| a.value() == &p.account[..])
                }
                _ => false,
            });
        }
        Ok(out)
    }

    /// Settles receipts, each on its own (one refused does not stop the others), all in one
    /// transaction. Signatures are checked first, on up to `threads` threads.
    pub fn settle(&self, batch: &[Settle]) -> Result<Vec<Result<Settled, EscrowError>>, EscrowError> {
        let parsed = par_map(batch, parse, lost);
        let keep = newest_only(&parsed);
        let bound = self.bound(&parsed, &keep)?;
        let jobs: Vec<_> = batch.iter().zip(&parsed).zip(keep.iter().zip(bound)).collect();
        let checked = par_map(
            &jobs,
            |((s, p), (keep, bound))| match p {
                Err(e) => Err(e.clone()),
                Ok(_) if !**keep => Err(EscrowError::Superseded),
                Ok(p) => check(s, p, *bound),
            },
            lost,
        );
        let tx = self.db.begin_write()?;
        let mut out = Vec::with_capacity(batch.len());
        {
            let mut accounts = tx.open_table(ACCOUNTS)?;
            let spenders = tx.open_table(SPENDERS)?;
            let mut settled = tx.open_table(SETTLED)?;
            let mut payees = tx.open_table(PAYEES)?;
            for c in checked {
                out.push(c.and_then(|c| {
                    let payee = c.payee.to_bytes();
                    let bound_to = payees.get(&payee[..])?.map(|a| a.value().to_vec());
                    match bound_to {
                        Some(a) if a != c.account => return Err(EscrowError::PayeeBound),
                        Some(_) => {}
                        // Bound by a settlement whose payee signature checked out.
                        None if c.signed => {
                            payees.insert(&payee[..], &c.account[..])?;
                        }
                        None => return Err(EscrowError::BadSignature),
                    }
                    let payer_account =
                        spenders.get(&c.payer.to_bytes()[..])?.ok_or(EscrowError::UnknownPayer)?.value().to_vec();
                    let pair = [c.payer.to_bytes(), c.payee.to_bytes()].concat();
                    let done = settled.get(&pair[..])?.map_or(0, |v| v.value());
                    if c.amount <= done {
                        return Err(EscrowError::NothingNew);
                    }
                    let delta = c.amount - done;
                    let from = accounts.get(&payer_account[..])?.ok_or(EscrowError::NoAccount)?.value().to_vec();
                    let to = accounts.get(&c.account[..])?.ok_or(EscrowError::NoAccount)?.value().to_vec();
                    let balance = balance_of(&from);
                    if balance < delta {
                        return Err(EscrowError::Insufficient { needed: delta, balance });
                    }
                    if payer_account != c.account {
                        accounts.insert(&payer_account[..], &record(balance - delta, &from[8..])[..])?;
                        let credit = balance_of(&to).saturating_add(delta);
                        accounts.insert(&c.account[..], &record(credit, &to[8..])[..])?;
                    }
                    settled.insert(&pair[..], c.amount)?;
                    Ok(Settled { paid: delta })
                }));
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Every account's balance added up (for consistency checks).
    pub fn total(&self) -> Result<u64, EscrowError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(ACCOUNTS)?;
        let mut sum = 0u64;
        for e in t.iter()? {
            let (_, v) = e?;
            sum = sum.saturating_add(balance_of(v.value()));
        }
        Ok(sum)
    }

    /// Coins withdrawn so far.
    pub fn withdrawn(&self) -> Result<u64, EscrowError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(WITHDRAWALS)?;
        let mut sum = 0u64;
        for e in t.iter()? {
            let (_, v) = e?;
            let j: serde_json::Value =
                serde_json::from_slice(v.value()).map_err(|e| EscrowError::Store(e.to_string()))?;
            sum += j["amount"].as_u64().unwrap_or(0);
        }
        Ok(sum)
    }
}

/// A settle request decoded (each receipt once: decoding its keys is a point decompression).
struct Parsed {
    receipt: Receipt,
    bytes: Vec<u8>,
    account: Vec<u8>,
}

fn parse(s: &Settle) -> Result<Parsed, EscrowError> {
    let bytes = hex::decode(&s.receipt).map_err(|_| EscrowError::BadRequest("receipt: not hex".into()))?;
    let receipt = Receipt::decode(&bytes).map_err(|e| EscrowError::BadRequest(format!("receipt: {e}")))?;
    Ok(Parsed { receipt, bytes, account: parse_id(&s.account)? })
}

/// Checks a decoded request's signatures (no store access: runs on any thread). The payee's
/// is skipped when its key is `bound` to the request's account already.
fn check(s: &Settle, p: &Parsed, bound: bool) -> Result<Checked, EscrowError> {
    let r = &p.receipt;
    r.verify().map_err(|_| EscrowError::BadSignature)?;
    if !bound {
        let sig = hex::decode(&s.payee_sig).map_err(|_| EscrowError::BadSignature)?;
        if !r.payee.verify(&settle_message(&p.bytes, &s.account), &sig) {
            return Err(EscrowError::BadSignature);
        }
    }
    Ok(Checked { payer: r.payer, payee: r.payee, amount: r.amount, account: p.account.clone(), signed: !bound })
}

/// Receipts are cumulative: of several in one batch for the same payer and payee only the
/// newest can pay anything, so only it is checked and settled (the others are answered
/// [`EscrowError::Superseded`] without spending signature checks on them).
fn newest_only(parsed: &[Result<Parsed, EscrowError>]) -> Vec<bool> {
    let mut newest: std::collections::HashMap<Vec<u8>, (u64, usize)> = Default::default();
    let mut keep = vec![true; parsed.len()];
    for (i, p) in parsed.iter().enumerate() {
        let Ok(p) = p else { continue };
        let r = &p.receipt;
        let pair = [r.payer.to_bytes(), r.payee.to_bytes()].concat();
        match newest.get(&pair) {
            Some(&(amount, _)) if amount >= r.amount => keep[i] = false,
            Some(&(_, j)) => {
                keep[j] = false;
                newest.insert(pair, (r.amount, i));
            }
            None => {
                newest.insert(pair, (r.amount, i));
            }
        }
    }
    keep
}

/// The answer for a request whose checking thread died.
fn lost<T>() -> Result<T, EscrowError> {
    Err(EscrowError::BadRequest("check failed".into()))
}

/// `f` over `items` on the machine's cores (decoding and checking signatures are most of a
/// settlement), results in order.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync, lost: impl Fn() -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if items.len() < 64 || threads == 1 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> =
            items.chunks(chunk).map(|c| (c.len(), s.spawn(move || c.iter().map(f).collect::<Vec<_>>()))).collect();
        // One result per item, in order, whatever happens to a thread.
        handles.into_iter().flat_map(|(n, h)| h.join().unwrap_or_else(|_| (0..n).map(|_| lost()).collect())).collect()
    })
}
