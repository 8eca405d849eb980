//! Payments on a running node: the core counts, claims and receipts on every route
//! (`skyroute_proto::route` accounting); this authorises our routes' payer keys at the escrow
//! (as a source) and cashes the receipts our relay routes earned (as a hop), every few
//! seconds, over the escrow's JSON lines. A round runs in its own task; the driver only hands
//! it work and reads its outcome. Work an unreachable escrow did not take is kept for the next
//! round (receipts are cumulative, so only the newest per route matters).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skyroute_proto::{PublicKey, RouteId};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::Driver;
use crate::control::AccountingStatus;
use crate::driver::EscrowOptions;
use skyroute_escrow::{settle_message, Settle};

/// How often a round goes to the escrow.
const ROUND: Duration = Duration::from_secs(2);
/// Longest a round may take.
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);
/// Work kept while the escrow is unreachable.
const MAX_PENDING: usize = 10_000;
/// Rounds a receipt is offered while the escrow says to try again (its payer's key not yet
/// authorised: the source's own round may come after ours).
const MAX_ATTEMPTS: u8 = 5;

#[derive(Default)]
struct Outcome {
    authorized: u64,
    settled: u64,
    paid: u64,
    refused: u64,
    /// The escrow could not be reached or answered nonsense: the work goes back.
    failed: Option<String>,
    keys: Vec<PublicKey>,
    items: Vec<(Settle, u8)>,
    /// Items the escrow said to offer again.
    retry: Vec<(Settle, u8)>,
}

pub(in crate::driver) struct PayState {
    escrow: Option<EscrowOptions>,
    next: Instant,
    /// Our routes whose payer key went to the escrow (or is on its way).
    authorized_routes: BTreeSet<RouteId>,
    keys: Vec<PublicKey>,
    items: Vec<(Settle, u8)>,
    round: Option<oneshot::Receiver<Outcome>>,
    /// Totals: keys authorised, receipts settled and what they paid, refused, failed rounds.
    authorized: u64,
    settled: u64,
    paid: u64,
    refused: u64,
    errors: u64,
    last_error: Option<String>,
}

impl PayState {
    pub(in crate::driver) fn new(escrow: Option<EscrowOptions>) -> PayState {
        PayState {
            escrow,
            next: Instant::now() + ROUND,
            authorized_routes: BTreeSet::new(),
            keys: Vec::new(),
            items: Vec::new(),
            round: None,
            authorized: 0,
            settled: 0,
            paid: 0,
            refused: 0,
            errors: 0,
            last_error: None,
        }
    }

    pub(in crate::driver) fn deadline(&self) -> Option<Instant> {
        self.escrow.as_ref().map(|_| self.next)
    }
}

impl Driver {
    pub(super) fn pay_tick(&mut self, now: Instant) {
        let Some(escrow) = self.pay.escrow.clone() else { return };
        if now < self.pay.next {
            return;
        }
        self.pay.next = now + ROUND;
        if let Some(rx) = self.pay.round.as_mut() {
            match rx.try_recv() {
                Ok(o) => self.pay_outcome(o),
                Err(oneshot::error::TryRecvError::Empty) => return,
                Err(oneshot::error::TryRecvError::Closed) => self.pay.errors += 1,
            }
            self.pay.round = None;
        }
        // New work: payer keys of our routes (a source with the account's secret), receipts.
        let live: BTreeSet<RouteId> = self.host.node().route_ids().into_iter().collect();
        self.pay.authorized_routes.retain(|r| live.contains(r));
        if escrow.secret.is_some() {
            for r in live {
                if let Some(k) = self.host.node().route_payer_key(r) {
                    if self.pay.authorized_routes.insert(r) {
                        self.pay.keys.push(k);
                    }
                }
            }
        }
        let account = escrow.account.clone();
        let settlements = self.host.node_mut(now).settlements(&|r| settle_message(&r.encode(), &account));
        self.pay.items.extend(settlements.iter().map(|(r, sig)| (Settle::signed(r, &account, sig), 0)));
        let excess = self.pay.keys.len().saturating_sub(MAX_PENDING);
        self.pay.keys.drain(..excess);
        let excess = self.pay.items.len().saturating_sub(MAX_PENDING);
        self.pay.items.drain(..excess);
        if self.pay.keys.is_empty() && self.pay.items.is_empty() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        let keys = std::mem::take(&mut self.pay.keys);
        let items = std::mem::take(&mut self.pay.items);
        tokio::spawn(async move {
            let o = match tokio::time::timeout(ROUND_TIMEOUT, round(&escrow, &keys, &items)).await {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => Outcome { failed: Some(e), keys, items, ..Outcome::default() },
                Err(_) => Outcome { failed: Some("escrow timed out".into()), keys, items, ..Outcome::default() },
            };
            let _ = tx.send(o);
        });
        self.pay.round = Some(rx);
    }

    fn pay_outcome(&mut self, o: Outcome) {
        let p = &mut self.pay;
        p.authorized += o.authorized;
        p.settled += o.settled;
        p.paid += o.paid;
        p.refused += o.refused;
        let (again, given_up): (Vec<_>, Vec<_>) = o.retry.into_iter().partition(|(_, n)| *n < MAX_ATTEMPTS);
        p.refused += given_up.len() as u64;
        p.items.extend(again);
        if let Some(e) = o.failed {
            tracing::warn!(error = %e, "escrow round failed; retrying");
            p.errors += 1;
            p.last_error = Some(e);
            p.keys.extend(o.keys);
            p.items.extend(o.items);
        }
    }

    pub(super) fn accounting_status(&self) -> AccountingStatus {
        let a = self.host.node().accounting();
        let reasons =
            |r: &skyroute_proto::accounting::Refused| r.iter().map(|(e, n)| (e.name().to_string(), n)).collect();
        let c = &self.host.node().config().route.accounting;
        AccountingStatus {
            price_per_mib: c.price_per_mib,
            max_price_per_mib: c.max_price_per_mib,
            charged_routes: a.charged_routes,
            throttled_routes: a.throttled_routes,
            dropped_routes: a.dropped_routes,
            carried_bytes: a.carried_bytes,
            paid_bytes: a.paid_bytes,
            earned: a.earned,
            receipts_refused: reasons(&a.receipts_refused),
            receipted_bytes: a.receipted_bytes,
            owed: a.owed,
            claims_refused: reasons(&a.claims_refused),
            bad_notes: a.bad_notes,
            escrow: self.pay.escrow.as_ref().map(|e| e.addr.to_string()),
            authorized_keys: self.pay.authorized,
            settled_receipts: self.pay.settled,
            settled_amount: self.pay.paid,
            settle_refused: self.pay.refused,
            escrow_errors: self.pay.errors,
            escrow_last_error: self.pay.last_error.clone(),
        }
    }
}

/// One round at the escrow: authorise `keys`, then settle `items`.
async fn round(e: &EscrowOptions, keys: &[PublicKey], items: &[(Settle, u8)]) -> Result<Outcome, String> {
    let stream = TcpStream::connect(e.addr).await.map_err(|x| format!("escrow {}: {x}", e.addr))?;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut ask = async |req: Value| -> Result<Value, String> {
        w.write_all(format!("{req}\n").as_bytes()).await.map_err(|x| x.to_string())?;
        let line = lines.next_line().await.map_err(|x| x.to_string())?.ok_or("escrow closed the connection")?;
        serde_json::from_str::<Value>(&line).map_err(|x| format!("escrow answered nonsense: {x}"))
    };
    let mut o = Outcome::default();
    if let Some(secret) = &e.secret {
        for k in keys {
            let a = ask(json!({"cmd": "authorize", "account": e.account, "secret": secret, "payer": k.to_string()}))
                .await?;
            if a["ok"] == true {
                o.authorized += 1;
            } else {
                tracing::warn!(answer = %a, "escrow refused to authorise a route key");
            }
        }
    }
    if !items.is_empty() {
        let batch: Vec<&Settle> = items.iter().map(|(s, _)| s).collect();
        let a = ask(json!({"cmd": "settle", "items": batch})).await?;
        let results = a["results"].as_array().ok_or_else(|| format!("escrow refused the batch: {a}"))?;
        for (r, (item, attempts)) in results.iter().zip(items) {
            match r["paid"].as_u64() {
                Some(paid) => {
                    o.settled += 1;
                    o.paid += paid;
                }
                None => match r["code"].as_str() {
                    // The payer's key or coins may still come: offer it again later.
                    Some("unknown_payer" | "insufficient") => o.retry.push((item.clone(), attempts + 1)),
                    // A newer receipt of the route settled (or is settling) it.
                    Some("nothing_new" | "superseded") => {}
                    _ => o.refused += 1,
                },
            }
        }
    }
    Ok(o)
}
