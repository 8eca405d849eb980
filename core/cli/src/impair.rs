//! `skyroute impair`: a UDP proxy that loses, delays, reorders and cuts datagrams on purpose,
//! since `tc netem` is not available here. Seeded, so a run can be repeated.
//!
//! It listens on one address and forwards everything from its clients to `forward`, and what
//! `forward` answers back to the client that last wrote; both directions are impaired alike.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Duration;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// What the proxy does to datagrams.
#[derive(Debug, Clone)]
pub struct Impairment {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Delay added to every datagram.
    pub delay: Duration,
    /// Extra random delay in `0..jitter`.
    pub jitter: Duration,
    /// Probability that a datagram is held back so that later ones overtake it.
    pub reorder: f64,
    /// The link goes down for `down_for` every `down_every` (both zero: never).
    pub down_every: Duration,
    pub down_for: Duration,
    pub seed: u64,
    /// A switch held by the caller: while it is on, the link is down (the demo's cuts).
    pub cut: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Default for Impairment {
    fn default() -> Self {
        Impairment {
            loss: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: 0.0,
            down_every: Duration::ZERO,
            down_for: Duration::ZERO,
            seed: 1,
            cut: None,
        }
    }
}

/// Counters of what the proxy did.
#[derive(Debug, Default, Clone)]
pub struct ImpairStats {
    pub forwarded: u64,
    pub lost: u64,
    pub dropped_down: u64,
    pub reordered: u64,
}

struct Pending {
    payload: Vec<u8>,
    dst: SocketAddr,
}

/// Runs the proxy until `stop` resolves; returns its counters.
pub async fn run(
    socket: UdpSocket,
    forward: SocketAddr,
    imp: Impairment,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<ImpairStats> {
    let mut rng = ChaCha20Rng::seed_from_u64(imp.seed);
    let mut stats = ImpairStats::default();
    let mut queue: BinaryHeap<Reverse<(Instant, u64, usize)>> = BinaryHeap::new();
    let mut slots: Vec<Option<Pending>> = Vec::new();
    let mut seq = 0u64;
    let mut client: Option<SocketAddr> = None;
    let mut buf = vec![0u8; 65_536];
    let start = Instant::now();
    let chance = |rng: &mut ChaCha20Rng, p: f64| p > 0.0 && (rng.next_u64() as f64 / u64::MAX as f64) < p;
    tokio::pin!(stop);
    loop {
        let next = queue.peek().map(|Reverse((t, _, _))| *t);
        tokio::select! {
            _ = &mut stop => return Ok(stats),
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let dst = if from == forward {
                    match client { Some(c) => c, None => continue }
                } else {
                    client = Some(from);
                    forward
                };
                let now = Instant::now();
                let since = now - start;
                let down = (!imp.down_every.is_zero()
                    && Duration::from_nanos((since.as_nanos() % imp.down_every.as_nanos()) as u64) >= imp.down_every.saturating_sub(imp.down_for))
                    || imp.cut.as_ref().is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed));
                if down {
                    stats.dropped_down += 1;
                    continue;
                }
                if chance(&mut rng, imp.loss) {
                    stats.lost += 1;
                    continue;
                }
                let mut delay = imp.delay;
                if !imp.jitter.is_zero() {
                    delay += Duration::from_nanos(rng.next_u64() % imp.jitter.as_nanos() as u64);
                }
                if chance(&mut rng, imp.reorder) {
                    stats.reordered += 1;
                    delay += imp.delay + imp.jitter + Duration::from_millis(1);
                }
                let slot = slots.iter().position(Option::is_none).unwrap_or_else(|| {
                    slots.push(None);
                    slots.len() - 1
                });
                slots[slot] = Some(Pending { payload: buf[..n].to_vec(), dst });
                seq += 1;
                queue.push(Reverse((now + delay, seq, slot)));
            }
            _ = sleep_until(next) => {
                let now = Instant::now();
                while let Some(Reverse((t, _, slot))) = queue.peek().copied() {
                    if t > now {
                        break;
                    }
                    queue.pop();
                    if let Some(p) = slots.get_mut(slot).and_then(Option::take) {
                        let _ = socket.send_to(&p.payload, p.dst).await;
                        stats.forwarded += 1;
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
