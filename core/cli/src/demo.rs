//! The out-of-the-box demo (`cargo run --release`, or `skyroute` with no command): five real
//! nodes on loopback in this process, with real UDP, TCP and QUIC sockets, two of the links
//! through the impairment proxy. A phone streams to a server over one session spread on two
//! disjoint routes while its WiFi and then its LTE link are cut and restored. The relays
//! charge for what they carry; the phone pays them with receipts that the relays settle at an
//! escrow running in the same process (its store in a temporary file).
//!
//! ```text
//!            wifi (UDP, via proxy: loss, delay)      TCP            UDP
//!   phone ---------------------------------- wifi-ap ----- core ------ server
//!        \                                                            /
//!         `--- lte (QUIC, via proxy: loss, more delay) --- lte-tower -'  (QUIC)
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand_core::OsRng;
use skyroute_proto::SecretKey;

use crate::impair::{self, ImpairStats, Impairment};
use skyroute::control::Status;
use skyroute::driver::{EscrowOptions, Options, RunningNode};
use skyroute::service::transfer::Source;
use skyroute::transport::Addr;
use skyroute_escrow::{Escrow, Faucet};

/// How long the phone streams.
const STREAM: Duration = Duration::from_secs(12);
/// Bytes per transfer; transfers run back to back.
const CHUNK: u64 = 8 << 20;

/// What the relays charge per MiB (wifi-ap, lte-tower, core), in the escrow's smallest unit
/// (1 coin = 1,000,000), and what the phone deposits.
const PRICES: [u32; 3] = [2_000, 5_000, 1_000];
const DEPOSIT: u64 = 10_000_000;
/// The most a node pays per MiB.
const MAX_PRICE: u32 = 10_000;

/// What happens when (seconds into the stream).
const SCRIPT: [(f64, Cut, bool, &str); 4] = [
    (3.0, Cut::Wifi, true, "WiFi out of range: every packet on it dropped"),
    (6.0, Cut::Wifi, false, "WiFi back"),
    (8.0, Cut::Lte, true, "LTE lost in a tunnel: every packet on it dropped"),
    (10.0, Cut::Lte, false, "LTE back"),
];

#[derive(Clone, Copy)]
enum Cut {
    Wifi,
    Lte,
}

struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<ImpairStats>>,
}

async fn proxy(forward: SocketAddr, loss: f64, delay_ms: u64, seed: u64) -> std::io::Result<Proxy> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    let cut = Arc::new(AtomicBool::new(false));
    let imp = Impairment {
        loss,
        delay: Duration::from_millis(delay_ms),
        // No jitter: a radio link delays packets but rarely reorders them.
        jitter: Duration::ZERO,
        seed,
        cut: Some(cut.clone()),
        ..Impairment::default()
    };
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(impair::run(socket, forward, imp, async {
        let _ = rx.await;
    }));
    Ok(Proxy { addr, cut, stop, task })
}

/// The demo's outcome.
pub struct DemoReport {
    pub ok: bool,
    pub table: String,
}

/// Runs the demo; returns its table and whether everything held.
pub fn run() -> Result<DemoReport, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(demo()).map_err(|e| e.to_string())
}

async fn wait_for(what: &str, node: &RunningNode, ok: impl Fn(&Status) -> bool) -> std::io::Result<Status> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = node.status().await.map_err(std::io::Error::other)?;
        if ok(&s) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::other(format!("timed out waiting for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn links_up(s: &Status) -> usize {
    s.links.iter().filter(|l| l.state == "up").count()
}

/// The escrow on a loopback port, with an account for each node (the phone's funded).
struct DemoEscrow {
    addr: SocketAddr,
    accounts: Vec<(String, String)>,
    path: std::path::PathBuf,
}

fn escrow(nodes: usize) -> std::io::Result<DemoEscrow> {
    let path = std::env::temp_dir().join(format!("skyroute-demo-escrow-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let e = Escrow::open(&path, Box::new(Faucet)).map_err(std::io::Error::other)?;
    let accounts =
        (0..nodes).map(|_| e.open_account()).collect::<Result<Vec<_>, _>>().map_err(std::io::Error::other)?;
    e.deposit(&accounts[0].0, DEPOSIT).map_err(std::io::Error::other)?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || skyroute_escrow::server::run(e, listener));
    Ok(DemoEscrow { addr, accounts, path })
}

async fn demo() -> std::io::Result<DemoReport> {
    let names = ["phone", "wifi-ap", "lte-tower", "core", "server"];
    let bank = escrow(names.len())?;
    let mut nodes = Vec::new();
    for (i, (account, secret)) in bank.accounts.iter().enumerate() {
        let mut o = Options::loopback_all(SecretKey::generate(&mut OsRng));
        o.escrow = Some(EscrowOptions { addr: bank.addr, account: account.clone(), secret: Some(secret.clone()) });
        if (1..=3).contains(&i) {
            o.node.route.accounting.price_per_mib = PRICES[i - 1];
        }
        o.node.route.accounting.max_price_per_mib = Some(MAX_PRICE);
        nodes.push(RunningNode::spawn(o).await?);
    }
    let keys: Vec<_> = nodes.iter().map(|n| n.public_key).collect();
    let key = |i: usize| keys[i];
    let (phone, wifi, lte, core, server) = (0, 1, 2, 3, 4);
    let listen = |i: usize| nodes[i].listen;
    let bad = || std::io::Error::other("transport not listening");
    let wifi_proxy = proxy(listen(wifi).udp.ok_or_else(bad)?, 0.02, 4, 1).await?;
    let lte_proxy = proxy(listen(lte).quic.ok_or_else(bad)?, 0.01, 16, 2).await?;
    let to = |n: &RunningNode, peer, addr| n.connect(peer, addr).map_err(std::io::Error::other);
    to(&nodes[phone], key(wifi), Addr::Udp(wifi_proxy.addr))?;
    to(&nodes[phone], key(lte), Addr::Quic(lte_proxy.addr))?;
    to(&nodes[wifi], key(core), Addr::Tcp(listen(core).tcp.ok_or_else(bad)?))?;
    to(&nodes[core], key(server), Addr::Udp(listen(server).udp.ok_or_else(bad)?))?;
    to(&nodes[lte], key(server), Addr::Quic(listen(server).quic.ok_or_else(bad)?))?;
    for (a, b) in [(wifi, core), (core, server), (lte, server)] {
        nodes[phone].add_topology(key(a), key(b)).map_err(std::io::Error::other)?;
    }
    println!(
        "skyroute demo: 5 nodes on loopback (real UDP, TCP and QUIC sockets), two links through the impairment proxy."
    );
    println!("  phone -wifi(UDP, 2% loss, +4 ms)- wifi-ap -TCP- core -UDP- server");
    println!("  phone -lte(QUIC, 1% loss, +16 ms)- lte-tower -QUIC- server\n");
    wait_for("the phone's links", &nodes[phone], |s| links_up(s) == 2).await?;
    wait_for("the server's links", &nodes[server], |s| links_up(s) == 2).await?;
    wait_for("the wifi-ap's links", &nodes[wifi], |s| links_up(s) == 2).await?;

    let ping_before =
        nodes[phone].ping(key(server), 5, Duration::from_millis(20)).await.map_err(std::io::Error::other)?;
    let routes = wait_for("two routes", &nodes[phone], |s| {
        s.sessions.first().is_some_and(|x| x.paths.iter().filter(|p| p.state == "live").count() >= 2)
    })
    .await?;

    // The stream: transfers back to back; the script cuts links meanwhile.
    let bar = ProgressBar::new(STREAM.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {elapsed:>3} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let sender = nodes[phone].handle();
    let server_key = key(server);
    let stream = tokio::spawn(async move {
        let mut reports = Vec::new();
        while start.elapsed() < STREAM {
            let r = sender.transfer(server_key, Source::Bytes(CHUNK)).await;
            let stopped = matches!(r, Err(skyroute::driver::NodeError::Stopped));
            reports.push(r);
            if stopped {
                break;
            }
        }
        reports
    });
    let mut script = SCRIPT.iter().peekable();
    let mut samples = vec![(0.0f64, 0u64)];
    let mut log = Vec::new();
    while !stream.is_finished() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let t = start.elapsed().as_secs_f64();
        while let Some((at, which, on, what)) = script.peek().copied() {
            if t < *at {
                break;
            }
            let p = match which {
                Cut::Wifi => &wifi_proxy,
                Cut::Lte => &lte_proxy,
            };
            p.cut.store(*on, Ordering::Relaxed);
            let line = format!("{t:5.1} s  {what}");
            bar.println(&line);
            log.push(line);
            script.next();
        }
        let s = nodes[phone].status().await.map_err(std::io::Error::other)?;
        let confirmed = s.sessions.iter().map(|x| x.stream_bytes_confirmed).sum::<u64>();
        samples.push((t, confirmed));
        let live = s.sessions.first().map_or(0, |x| x.paths.iter().filter(|p| p.state == "live").count());
        bar.set_position((t * 1000.0) as u64);
        bar.set_message(format!("{:.1} MiB delivered, {live} live route(s)", confirmed as f64 / 1048576.0));
    }
    bar.finish_and_clear();
    let reports = stream.await.map_err(std::io::Error::other)?;
    let ping_after =
        nodes[phone].ping(key(server), 5, Duration::from_millis(20)).await.map_err(std::io::Error::other)?;
    // The relays settle their last receipts at the escrow (a round every 2 s).
    let mut earnings = Vec::new();
    for relay in [wifi, lte, core] {
        let due = nodes[relay].status().await.map_err(std::io::Error::other)?.accounting.earned;
        let s = wait_for("the relays' settlements", &nodes[relay], |s| s.accounting.settled_amount >= due).await?;
        earnings.push((names[relay], s.accounting));
    }
    let phone_status = nodes[phone].status().await.map_err(std::io::Error::other)?;
    let server_got = nodes[server].received().await.map_err(std::io::Error::other)?;

    let _ = wifi_proxy.stop.send(());
    let _ = lte_proxy.stop.send(());
    let wifi_stats = wifi_proxy.task.await.map_err(std::io::Error::other)??;
    let lte_stats = lte_proxy.task.await.map_err(std::io::Error::other)??;
    for n in nodes {
        n.stop().await?;
    }
    let _ = std::fs::remove_file(&bank.path);

    // The table.
    let ok_transfers = reports.iter().filter(|r| matches!(r, Ok(t) if t.ok)).count();
    let delivered: u64 = reports.iter().filter_map(|r| r.as_ref().ok()).filter(|t| t.ok).map(|t| t.bytes).sum();
    let secs = samples.last().map_or(1.0, |s| s.0).max(1e-3);
    let rate = |bytes: u64, secs: f64| bytes as f64 * 8.0 / secs / 1e6;
    let window = |from: f64, to: f64| {
        let at = |t: f64| samples.iter().rev().find(|s| s.0 <= t).map_or(0, |s| s.1);
        rate(at(to).saturating_sub(at(from)), to - from)
    };
    let breaks = phone_status.sessions.len().saturating_sub(1) + reports.iter().filter(|r| r.is_err()).count();
    let first_session = phone_status.sessions.first();
    let mut t = String::new();
    t += "\nwhat happened\n";
    for l in &log {
        t += &format!("  {l}\n");
    }
    t += "\nroutes of the phone's session\n";
    for p in routes.sessions.first().map(|s| s.paths.as_slice()).unwrap_or_default() {
        t += &format!("  phone > {}  ({})\n", p.hops.join(" > "), p.state);
    }
    t += &format!(
        "\n{:<10} {:<9} {:>8} {:>9} {:>9} {:>7} {:>12} {:>12}\n",
        "link", "transport", "rtt ms", "tx pkts", "rx pkts", "rekeys", "proxy lost", "proxy cut"
    );
    for (name, peer, stats) in [("wifi", key(wifi), &wifi_stats), ("lte", key(lte), &lte_stats)] {
        if let Some(l) = phone_status.links.iter().find(|l| l.peer == peer.to_string()) {
            t += &format!(
                "{:<10} {:<9} {:>8} {:>9} {:>9} {:>7} {:>12} {:>12}\n",
                name,
                l.transport,
                l.rtt_ms.map_or("-".into(), |r| format!("{r:.1}")),
                l.tx_packets,
                l.rx_packets,
                l.rekeys,
                stats.lost,
                stats.dropped_down
            );
        }
    }
    t += &format!(
        "\n{:<10} {:>9} {:>12} {:>10} {:>10} {:>9}\n",
        "relay", "price/MiB", "carried MiB", "earned", "settled", "throttled"
    );
    for (name, a) in &earnings {
        t += &format!(
            "{:<10} {:>9} {:>12.1} {:>10} {:>10} {:>9}\n",
            name,
            a.price_per_mib,
            a.carried_bytes as f64 / 1048576.0,
            a.earned,
            a.settled_amount,
            a.throttled_routes
        );
    }
    let settled: u64 = earnings.iter().map(|(_, a)| a.settled_amount).sum();
    let rows: Vec<(&str, String)> = vec![
        (
            "delivered, intact (sha256 both ends)",
            format!("{:.0} MiB in {ok_transfers} of {} transfers", delivered as f64 / 1048576.0, reports.len()),
        ),
        ("throughput, whole stream", format!("{:.0} Mbit/s", rate(delivered, secs))),
        ("throughput, WiFi cut (3-6 s)", format!("{:.0} Mbit/s", window(3.5, 6.0))),
        ("throughput, LTE cut (8-10 s)", format!("{:.0} Mbit/s", window(8.5, 10.0))),
        (
            "ping over the session, before",
            format!("{:.1} ms avg ({} of {})", ping_before.avg_ms, ping_before.received, ping_before.sent),
        ),
        (
            "ping over the session, after",
            format!("{:.1} ms avg ({} of {})", ping_after.avg_ms, ping_after.received, ping_after.sent),
        ),
        (
            "packets lost or cut by the proxies",
            format!(
                "{} (all recovered)",
                wifi_stats.lost + wifi_stats.dropped_down + lte_stats.lost + lte_stats.dropped_down
            ),
        ),
        ("link rekeys (phone)", format!("{}", phone_status.links.iter().map(|l| l.rekeys).sum::<u64>())),
        ("session repair symbols sent", format!("{}", first_session.map_or(0, |s| s.repair_sent))),
        ("transfers received by the server", format!("{}", server_got.iter().filter(|r| r.ok).count())),
        (
            "phone paid the relays (escrow)",
            format!(
                "owes {} for {:.0} MiB relayed (summed over relays); {settled} settled of its {DEPOSIT} deposit",
                phone_status.accounting.owed,
                phone_status.accounting.receipted_bytes as f64 / 1048576.0
            ),
        ),
        ("session breaks", format!("{breaks}")),
    ];
    t += "\n";
    for (k, v) in rows {
        t += &format!("{k:<38} {v}\n");
    }
    let paid = earnings.iter().all(|(_, a)| a.earned > 0 && a.settled_amount > 0 && a.throttled_routes == 0);
    let ok = breaks == 0 && ok_transfers == reports.len() && !reports.is_empty() && ping_after.received > 0 && paid;
    Ok(DemoReport { ok, table: t })
}
