//! Real sockets on loopback, as ratios against baselines measured in the same run:
//!
//! - one hop over UDP: session goodput / raw UDP loopback goodput with the same packet size
//!   (one `sendto` per datagram, what a plain UDP program does; and, for reference, raw UDP with
//!   the GSO/GRO batching the driver itself uses);
//! - two hops over QUIC / two hops over UDP (and TCP / UDP);
//! - an idle `skyroute node`: resident memory and CPU time.
//!
//! `cargo bench -p skyroute-cli --bench real` (prints a table; `SKYROUTE_BENCH_MIB` sets the size).

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::OsRng;
use skyroute::driver::{Options, RunningNode};
use skyroute::service::transfer::Source;
use skyroute::transport::Kind;
use skyroute_proto::{Event, SecretKey};

/// Link packet size on the wire (the default link MTU).
const PACKET: usize = 1440;

/// Raw UDP loopback: one thread sends `PACKET`-byte datagrams as fast as it can, another
/// receives; goodput is what the receiver got, in bytes per second.
fn raw_udp(secs: f64) -> f64 {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = rx.local_addr().unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicU64::new(0));
    let receiver = {
        let (stop, got) = (stop.clone(), got.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = rx.recv(&mut buf) {
                    got.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        })
    };
    let payload = [7u8; PACKET];
    let start = Instant::now();
    let until = Duration::from_secs_f64(secs);
    let mut at_start = None;
    while start.elapsed() < until {
        for _ in 0..64 {
            let _ = tx.send_to(&payload, to);
        }
        // Skip the first 10%: sockets warming up.
        if at_start.is_none() && start.elapsed() > until / 10 {
            at_start = Some((Instant::now(), got.load(Ordering::Relaxed)));
        }
    }
    let (t0, b0) = at_start.unwrap();
    let bytes = got.load(Ordering::Relaxed) - b0;
    let rate = bytes as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    receiver.join().unwrap();
    rate
}

/// Raw UDP loopback with the batching the driver uses (GSO sends, GRO/recvmmsg receives):
/// the same packets, as fast as the OS takes them.
async fn raw_udp_batched(secs: f64) -> f64 {
    use skyroute::transport::udp::Udp;
    let mut rx = Udp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut tx = Udp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let to = rx.local_addr().unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let counter = got.clone();
    let receiver = tokio::spawn(async move {
        loop {
            let mut n = 0;
            if rx.recv(|_, d| n += d.len() as u64).await.is_err() {
                return;
            }
            counter.fetch_add(n, Ordering::Relaxed);
        }
    });
    let payload = [7u8; PACKET];
    let start = Instant::now();
    let until = Duration::from_secs_f64(secs);
    let mut at_start = None;
    while start.elapsed() < until {
        for _ in 0..256 {
            let _ = tx.push(to, &payload).await;
        }
        let _ = tx.flush().await;
        tokio::task::yield_now().await;
        if at_start.is_none() && start.elapsed() > until / 10 {
            at_start = Some((Instant::now(), got.load(Ordering::Relaxed)));
        }
    }
    let (t0, b0) = at_start.unwrap();
    let rate = (got.load(Ordering::Relaxed) - b0) as f64 / t0.elapsed().as_secs_f64();
    receiver.abort();
    rate
}

async fn node() -> RunningNode {
    RunningNode::spawn(Options::loopback_all(SecretKey::generate(&mut OsRng))).await.unwrap()
}

async fn link_up(n: &mut RunningNode, links: usize) {
    let mut up = 0;
    while up < links {
        match tokio::time::timeout(Duration::from_secs(10), n.events.recv()).await {
            Ok(Some(Event::LinkUp { .. })) => up += 1,
            Ok(Some(_)) => {}
            _ => panic!("links did not come up"),
        }
    }
}

/// Session goodput over a line of `hops` hops on `kind`, bytes per second (a warm-up transfer
/// first, so the session and its routes are up).
async fn session_goodput(kind: Kind, hops: usize, bytes: u64) -> f64 {
    let mut nodes = Vec::new();
    for _ in 0..=hops {
        nodes.push(node().await);
    }
    for i in 0..hops {
        nodes[i].connect(nodes[i + 1].public_key, nodes[i + 1].listen.addr(kind).unwrap()).unwrap();
        if i + 1 < hops {
            nodes[0].add_topology(nodes[i + 1].public_key, nodes[i + 2].public_key).unwrap();
        }
    }
    for (i, n) in nodes.iter_mut().enumerate() {
        link_up(n, if i == 0 || i == hops { 1 } else { 2 }).await;
    }
    let dst = nodes[hops].public_key;
    let warm = nodes[0].transfer(dst, Source::Bytes(4 << 20)).await.unwrap();
    assert!(warm.ok);
    let t = nodes[0].transfer(dst, Source::Bytes(bytes)).await.unwrap();
    assert!(t.ok, "{t:?}");
    for n in nodes {
        n.stop().await.unwrap();
    }
    t.bytes as f64 / t.secs
}

fn idle_node() -> (f64, f64) {
    let exe = env!("CARGO_BIN_EXE_skyroute");
    let dir = std::env::temp_dir().join(format!("skyroute-bench-idle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        "[listen]\nudp = \"127.0.0.1:0\"\ntcp = \"127.0.0.1:0\"\nquic = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n",
    )
    .unwrap();
    let mut child = Command::new(exe)
        .args(["node", "--data-dir", dir.to_str().unwrap(), "--config", cfg.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(2));
    let cpu = || {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
        (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / 100.0
    };
    let c0 = cpu();
    let window = 10.0;
    std::thread::sleep(Duration::from_secs_f64(window));
    let used = cpu() - c0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    (rss_kib / 1024.0, used / window)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing and expects a
    // quick run: keep that one small.
    let quick = !std::env::args().any(|a| a == "--bench");
    let mib: u64 =
        std::env::var("SKYROUTE_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(if quick { 8 } else { 256 });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mbit = |b: f64| b * 8.0 / 1e6;

    if std::env::var("SKYROUTE_BENCH_ONLY").as_deref() == Ok("one-hop") {
        // For profiling: the one-hop session alone.
        let one = rt.block_on(session_goodput(Kind::Udp, 1, mib << 20));
        println!("session, 1 hop UDP: {:.0} Mbit/s", mbit(one));
        return;
    }
    let raw = raw_udp(if quick { 0.3 } else { 2.0 });
    let raw_batched = rt.block_on(raw_udp_batched(if quick { 0.3 } else { 2.0 }));
    let one_udp = rt.block_on(session_goodput(Kind::Udp, 1, mib << 20));
    let two_udp = rt.block_on(session_goodput(Kind::Udp, 2, mib << 20));
    let two_quic = rt.block_on(session_goodput(Kind::Quic, 2, mib << 20));
    let two_tcp = rt.block_on(session_goodput(Kind::Tcp, 2, mib << 20));
    println!("real sockets on loopback, {mib} MiB per transfer, {PACKET}-byte packets");
    println!("{:<44} {:>10}  {:>8}", "", "Mbit/s", "ratio");
    println!("{:<44} {:>10.0}  {:>8}", "raw UDP loopback (baseline)", mbit(raw), "1.00");
    println!(
        "{:<44} {:>10.0}  {:>8.3}",
        "raw UDP loopback, GSO/GRO batches / raw UDP",
        mbit(raw_batched),
        raw_batched / raw
    );
    println!("{:<44} {:>10.0}  {:>8.3}  (goal >= 0.5)", "session, 1 hop UDP / raw UDP", mbit(one_udp), one_udp / raw);
    println!("{:<44} {:>10}  {:>8.3}", "session, 1 hop UDP / raw UDP with GSO/GRO", "", one_udp / raw_batched);
    println!("{:<44} {:>10.0}  {:>8}", "session, 2 hops UDP (baseline)", mbit(two_udp), "1.00");
    println!("{:<44} {:>10.0}  {:>8.3}", "session, 2 hops QUIC / 2 hops UDP", mbit(two_quic), two_quic / two_udp);
    println!("{:<44} {:>10.0}  {:>8.3}", "session, 2 hops TCP / 2 hops UDP", mbit(two_tcp), two_tcp / two_udp);
    if !quick {
        let (rss, cpu) = idle_node();
        println!("idle node: {rss:.1} MiB RSS (goal < 16), {:.2}% of a core over 10 s", cpu * 100.0);
    }
}
