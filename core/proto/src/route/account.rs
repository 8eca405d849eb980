//! Accounting on routes (seed: "incentives: payment protocol"): a hop that charges counts the
//! bytes its buffers took in for a route, both ways and per class, and every `interval` sends
//! the source a signed cumulative [`Claim`]; the source checks it against its own count and
//! answers with a signed cumulative [`Receipt`] that the hop can settle at the escrow. A hop
//! left unpaid beyond its allowance for longer than the grace period throttles the route (a
//! small credit window) or drops it, as configured.
//!
//! Both sides sign with keys made for this route alone (`accounting`), never node keys. The
//! notes travel as ROUTE_NOTE control frames, reliable hop by hop, sealed end to end with the
//! keys the source shares with that hop since the telescoping setup: the source's route key
//! goes to each hop (MSG_PAYER) when the route is ready, claims go back sealed by their hop,
//! receipts forward sealed to their hop. A hop passes on what it cannot open, so only the two
//! ends of a note read it; the source tells its hops apart by whose key opens the note, and
//! pins each hop's route key at its first claim.

use super::*;
use crate::accounting::{Claim, Payee, Payer, Policy, Receipt, ReceiptError, Refused, Verdict};
use crate::identity::SIGNATURE_LEN;

/// Route message kinds of accounting notes (inside a ROUTE_NOTE frame).
const MSG_PAYER: u8 = 7;
const MSG_CLAIM: u8 = 8;
const MSG_RECEIPT: u8 = 9;

/// Payment settings of a node, as a hop and as a source.
#[derive(Debug, Clone)]
pub struct AccountingConfig {
    /// As a hop: price per MiB carried, in the escrow's smallest unit (0: carry for free,
    /// claim nothing).
    pub price_per_mib: u32,
    /// As a source: the highest price per MiB it pays; `None`: pays nobody.
    pub max_price_per_mib: Option<u32>,
    /// How often a hop claims what it carried.
    pub interval: Duration,
    /// Unpaid bytes a hop tolerates...
    pub allowance: u64,
    /// ...and for how long beyond that before it applies `policy`.
    pub grace: Duration,
    /// What to do with a route unpaid beyond its allowance and grace.
    pub policy: Policy,
    /// The credit window of a throttled route (bytes beyond what was forwarded).
    pub throttle_window: usize,
}

impl Default for AccountingConfig {
    fn default() -> Self {
        AccountingConfig {
            price_per_mib: 0,
            max_price_per_mib: Some(1_000),
            interval: Duration::from_secs(1),
            allowance: 4 * crate::accounting::MIB,
            grace: Duration::from_secs(10),
            policy: Policy::Throttle,
            throttle_window: 8 * 1024,
        }
    }
}

/// Payment counters of a node (cumulative, closed routes included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountingStats {
    /// As a hop: routes it charges now, and those of them throttled for not paying.
    pub charged_routes: usize,
    /// Of `charged_routes`, those throttled for not paying.
    pub throttled_routes: usize,
    /// Routes it dropped for not paying.
    pub dropped_routes: u64,
    /// Bytes carried on charged routes, bytes the sources receipted, what the receipts pay.
    pub carried_bytes: u64,
    /// Bytes the sources' receipts cover.
    pub paid_bytes: u64,
    /// What those receipts pay, in the escrow's smallest unit.
    pub earned: u64,
    /// Receipts refused (forged, replayed, decreasing, underpaying...).
    pub receipts_refused: Refused,
    /// As a source: bytes receipted to hops and what those receipts owe.
    pub receipted_bytes: u64,
    /// What our receipts owe the hops.
    pub owed: u64,
    /// Claims refused (forged, replayed, over-claiming, overpriced...).
    pub claims_refused: Refused,
    /// Notes nobody on the route could open, or malformed inside.
    pub bad_notes: u64,
}

/// A hop's accounting for one route.
pub(super) struct Charge {
    payee: Payee,
    next_claim: Instant,
    throttled: bool,
    /// Carried bytes and earnings already added to the node's totals.
    counted: u64,
    paid: u64,
    earned: u64,
    /// Bytes of the newest receipt handed out for settlement.
    settled: u64,
}

/// A source's accounting for one route.
pub(super) struct Pay {
    payer: Payer,
    /// Each hop's route key, pinned by its first claim.
    payees: Vec<Option<PublicKey>>,
}

/// Totals that outlive routes, and receipts of closed routes not yet settled.
#[derive(Default)]
pub(super) struct Ledger {
    stats: AccountingStats,
    retired: Vec<Charge>,
}

/// Receipts of closed routes kept for settlement; beyond this the oldest go.
const MAX_RETIRED: usize = 4096;
/// Notes a relay passes on per route per second. Honest traffic is about two per hop per
/// claim interval; notes bypass the route's credit, so a neighbour flooding them is cut here.
const MAX_NOTES_PER_SECOND: u16 = 256;

/// A relay's budget of notes to pass on (per route).
#[derive(Default)]
pub(super) struct NoteBudget {
    since: Option<Instant>,
    passed: u16,
}

impl NoteBudget {
    fn take(&mut self, now: Instant) -> bool {
        let since = *self.since.get_or_insert(now);
        if now.saturating_duration_since(since) >= Duration::from_secs(1) {
            (self.since, self.passed) = (Some(now), 0);
        }
        self.passed = self.passed.saturating_add(1);
        self.passed <= MAX_NOTES_PER_SECOND
    }
}

impl Ledger {
    /// A charged route is going: keep its receipt for settlement.
    pub(super) fn retire(&mut self, c: Charge) {
        if c.payee.latest().is_some_and(|r| r.bytes > c.settled) {
            if self.retired.len() >= MAX_RETIRED {
                self.retired.remove(0);
            }
            self.retired.push(c);
        }
    }
}

impl Charge {
    pub(super) fn new(now: Instant, rng: &mut dyn CryptoRngCore, c: &AccountingConfig) -> Option<Charge> {
        (c.price_per_mib > 0).then(|| Charge {
            payee: Payee::unbound(
                SecretKey::generate(&mut RngRef(rng)),
                c.price_per_mib,
                c.allowance,
                c.grace,
                c.policy,
            ),
            next_claim: now + c.interval,
            throttled: false,
            counted: 0,
            paid: 0,
            earned: 0,
            settled: 0,
        })
    }
}

impl Pay {
    pub(super) fn new(
        rng: &mut dyn CryptoRngCore,
        c: &AccountingConfig,
        fwd: &ForwardConfig,
        hops: usize,
    ) -> Option<Pay> {
        // A hop may count bytes on their way back that have not reached the source yet: at
        // most the buffers between it and us.
        let tolerance = (hops * (fwd.route_buffer_bytes + fwd.realtime_buffer_bytes) + 64 * 1024) as u64;
        c.max_price_per_mib.map(|max| Pay {
            payer: Payer::new(SecretKey::generate(&mut RngRef(rng)), max, tolerance),
            payees: vec![None; hops],
        })
    }
}

/// Bytes a route's buffers at this node took in, per class, both directions.
fn carried(fwd: &Forwarder, route: RouteId, class: Class) -> u64 {
    [Dir::Fwd, Dir::Back]
        .into_iter()
        .filter_map(|dir| fwd.flow_stats(FlowKey { route, dir, class }))
        .map(|s| s.received_bytes)
        .sum()
}

fn send_note(links: &mut dyn Links, to: (LinkId, RouteId), payload: &[u8]) {
    let _ = links.send(to.0, &Frame::RouteNote { route: to.1, payload });
}

impl Router {
    /// Payment counters.
    pub fn accounting(&self) -> AccountingStats {
        let mut s = self.ledger.stats.clone();
        for e in self.routes.values() {
            if let Entry::Relay(Relay { charge: Some(c), next: Some(_), .. }) = e {
                s.charged_routes += 1;
                s.throttled_routes += c.throttled as usize;
            }
        }
        s
    }

    /// The key our route `route` pays with (made for it alone), if it pays.
    pub fn payer_key(&self, route: RouteId) -> Option<PublicKey> {
        match self.routes.get(&route)? {
            Entry::Origin(Origin { pay: Some(p), .. }) => Some(p.payer.public_key()),
            _ => None,
        }
    }

    /// The newest receipt of every route this node charged, not handed out before, each with
    /// the route key's signature over `message(receipt)` (what the escrow wants to settle it).
    pub fn settlements(&mut self, message: &dyn Fn(&Receipt) -> Vec<u8>) -> Vec<(Receipt, [u8; SIGNATURE_LEN])> {
        let live = self.routes.values_mut().filter_map(|e| match e {
            Entry::Relay(Relay { charge: Some(c), .. }) => Some(c),
            _ => None,
        });
        let mut out = Vec::new();
        for c in live.chain(self.ledger.retired.iter_mut()) {
            if let Some(r) = c.payee.latest().filter(|r| r.bytes > c.settled) {
                c.settled = r.bytes;
                out.push((r.clone(), c.payee.sign(&message(r))));
            }
        }
        self.ledger.retired.clear();
        out
    }

    /// Our route became ready: name our route key to every hop that may charge (all but the
    /// last, where the route ends).
    pub(super) fn announce_payer(o: &mut Origin, links: &mut dyn Links) {
        let (Some(pay), Some(next)) = (&o.pay, o.next_id) else { return };
        let key = pay.payer.public_key().to_bytes();
        let last = o.hops.len() - 1;
        for h in &mut o.hops[..last] {
            let msg = seal_msg(&h.keys.fwd, &mut h.fwd_seqs, Class::Realtime, MSG_PAYER, &key);
            send_note(links, (o.first_link, next), &msg);
        }
    }

    /// A ROUTE_NOTE frame for our route `route` arrived on `from`.
    pub(crate) fn on_note(
        &mut self,
        now: Instant,
        links: &mut dyn Links,
        from: LinkId,
        route: RouteId,
        payload: &[u8],
    ) -> Result<(), Reject> {
        let window = self.config.accounting.throttle_window;
        let stats = &mut self.ledger.stats;
        match self.routes.get_mut(&route) {
            Some(Entry::Relay(r)) if r.prev.0 == from => match open_msg(&r.keys.fwd, &mut r.fwd_replay, payload) {
                Ok((kind, body)) => {
                    let Some(c) = r.charge.as_mut() else { return Ok(()) };
                    match kind {
                        MSG_PAYER => {
                            let payer = PublicKey::from_bytes(&body).map_err(|_| Reject::BadRouteMessage)?;
                            c.payee.bind(payer);
                        }
                        MSG_RECEIPT => {
                            let receipt = Receipt::decode(&body);
                            match receipt.and_then(|rc| c.payee.on_receipt(now, &rc)) {
                                Ok(()) => {
                                    let (bytes, amount) = c.payee.paid();
                                    // Both only grow (the hop refuses a receipt that lowers either).
                                    stats.paid_bytes += bytes.saturating_sub(c.paid);
                                    stats.earned += amount.saturating_sub(c.earned);
                                    (c.paid, c.earned) = (bytes, amount);
                                    let v = c.payee.verdict(now);
                                    if v != Verdict::Drop {
                                        Self::apply_verdict(links, route, c, v, window);
                                    }
                                }
                                Err(e) => stats.receipts_refused.add(e),
                            }
                        }
                        _ => return Err(Reject::BadRouteMessage),
                    }
                    Ok(())
                }
                // Not for us: on towards the hops after us.
                Err(_) => match r.next {
                    Some(_) if !r.notes.take(now) => Err(Reject::QueueFull),
                    Some(next) => {
                        send_note(links, next, payload);
                        Ok(())
                    }
                    None => {
                        stats.bad_notes += 1;
                        Err(Reject::BadRouteMessage)
                    }
                },
            },
            Some(Entry::Relay(r)) if r.next.is_some_and(|(l, _)| l == from) => {
                if !r.notes.take(now) {
                    return Err(Reject::QueueFull);
                }
                send_note(links, r.prev, payload);
                Ok(())
            }
            Some(Entry::Origin(o)) if o.first_link == from && o.ready() => {
                let opened = o
                    .hops
                    .iter_mut()
                    .enumerate()
                    .find_map(|(i, h)| open_msg(&h.keys.back, &mut h.back_replay, payload).ok().map(|m| (i, m)));
                let Some((i, (_, body))) = opened.filter(|(i, (k, _))| *k == MSG_CLAIM && *i + 1 < o.hops.len()) else {
                    stats.bad_notes += 1;
                    return Err(Reject::BadRouteMessage);
                };
                let Some(pay) = o.pay.as_mut() else { return Ok(()) };
                let claim = Claim::decode(&body).and_then(|c| match pay.payees[i] {
                    Some(k) if k != c.payee => Err(ReceiptError::WrongParty),
                    _ => Ok(c),
                });
                // Everything the route's buffers here took in, both ways, both classes.
                pay.payer.set_sent(links.fwd().route_activity(route));
                let before = claim.as_ref().ok().and_then(|c| pay.payer.receipted(&c.payee)).unwrap_or((0, 0));
                match claim.and_then(|c| pay.payer.on_claim(&c).map(|r| (c.payee, r))) {
                    Ok((payee, receipt)) => {
                        pay.payees[i] = Some(payee);
                        stats.receipted_bytes += receipt.bytes - before.0;
                        stats.owed += receipt.amount - before.1;
                        let h = &mut o.hops[i];
                        let msg =
                            seal_msg(&h.keys.fwd, &mut h.fwd_seqs, Class::Realtime, MSG_RECEIPT, &receipt.encode());
                        if let Some(next) = o.next_id {
                            send_note(links, (o.first_link, next), &msg);
                        }
                    }
                    Err(e) => stats.claims_refused.add(e),
                }
                Ok(())
            }
            _ => Err(Reject::UnknownRoute),
        }
    }

    /// Throttles or releases a route at a verdict.
    fn apply_verdict(links: &mut dyn Links, route: RouteId, c: &mut Charge, v: Verdict, window: usize) {
        let throttle = v == Verdict::Throttle;
        if throttle != c.throttled {
            c.throttled = throttle;
            links.fwd().throttle_route(route, throttle.then_some(window));
        }
    }

    /// When the next claim is due at any route we charge.
    pub(super) fn next_claim(r: &Relay) -> Option<Instant> {
        r.charge.as_ref().filter(|_| r.next.is_some()).map(|c| c.next_claim)
    }

    /// Due claims: count, claim, judge. Returns the routes to drop for not paying.
    pub(super) fn claim_due(&mut self, now: Instant, links: &mut dyn Links) -> Vec<RouteId> {
        let interval = self.config.accounting.interval;
        let window = self.config.accounting.throttle_window;
        let stats = &mut self.ledger.stats;
        let mut drop = Vec::new();
        for (route, e) in self.routes.iter_mut() {
            let Entry::Relay(r) = e else { continue };
            let Some(c) = r.charge.as_mut().filter(|c| c.next_claim <= now) else { continue };
            c.next_claim = now + interval;
            if r.next.is_none() {
                continue;
            }
            for class in Class::ALL {
                c.payee.set_carried(class, carried(links.fwd(), *route, class));
            }
            let total = c.payee.carried_total();
            stats.carried_bytes += total - c.counted;
            c.counted = total;
            if let Some(claim) = c.payee.claim() {
                let msg = seal_msg(&r.keys.back, &mut r.back_seqs, Class::Realtime, MSG_CLAIM, &claim.encode());
                send_note(links, r.prev, &msg);
            }
            match c.payee.verdict(now) {
                Verdict::Drop => drop.push(*route),
                v => Self::apply_verdict(links, *route, c, v, window),
            }
        }
        stats.dropped_routes += drop.len() as u64;
        drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_passes_a_bounded_number_of_notes_per_second() {
        let t0 = Instant::now(); // test-only clock
        let mut b = NoteBudget::default();
        assert!((0..MAX_NOTES_PER_SECOND).all(|_| b.take(t0)));
        assert!((0..70_000).all(|_| !b.take(t0 + Duration::from_millis(999))), "cut, and no overflow");
        assert!(b.take(t0 + Duration::from_secs(1)), "a new second");
    }
}
