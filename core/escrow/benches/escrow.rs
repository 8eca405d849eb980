//! Escrow load: receipts settled per second, in batches, against the same run's raw ECDSA
//! verification rate. A route's first settlement checks two signatures (the receipt's and the
//! payee's, which binds the payee key to its account); its later receipts only the receipt's.
//! `cargo bench -p skyroute-escrow --bench escrow` prints the table.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rand_core::OsRng;
use skyroute_escrow::{settle_request, Escrow, Faucet, Settle, COIN};
use skyroute_proto::accounting::{Payee, Payer, Policy, MIB};
use skyroute_proto::{Class, SecretKey};

const ROUTES: usize = 1000;
const PER_ROUTE: usize = 20;
const BATCH: usize = 1000;

fn receipts(e: &Escrow, src: &str, secret: &str, hop: &str) -> Vec<Settle> {
    let mut out = Vec::with_capacity(ROUTES * PER_ROUTE);
    for _ in 0..ROUTES {
        let mut payer = Payer::new(SecretKey::generate(&mut OsRng), u32::MAX, 0);
        e.authorize(src, secret, &payer.public_key()).expect("authorize");
        let key = SecretKey::generate(&mut OsRng);
        let mut payee = Payee::new(key.clone(), payer.public_key(), 1000, MIB, Duration::from_secs(5), Policy::Drop);
        for _ in 0..PER_ROUTE {
            payer.count_sent(MIB);
            payee.count(Class::Bulk, MIB);
            let r = payer.on_claim(&payee.claim().expect("claim")).expect("receipt");
            out.push(settle_request(&key, &r, hop));
        }
    }
    out
}

/// Route-major order (receipts of one route together) to interleaved (each batch of
/// `ROUTES` holds one receipt of every route: every one must be checked).
fn interleave(all: &[Settle]) -> Vec<Settle> {
    (0..PER_ROUTE).flat_map(|i| (0..ROUTES).map(move |r| all[r * PER_ROUTE + i].clone())).collect()
}

fn main() {
    let dir = std::env::temp_dir().join(format!("skyroute-escrow-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let e = Escrow::open(&dir.join("e.redb"), Box::new(Faucet)).expect("open");
    let (src, secret) = e.open_account().expect("account");
    let (hop, _) = e.open_account().expect("account");
    e.deposit(&src, 1_000_000 * COIN).expect("deposit");
    let all = receipts(&e, &src, &secret, &hop);
    let n = all.len();

    // Baseline: raw ECDSA verification on one core, and on all of them.
    let k = SecretKey::generate(&mut OsRng);
    let msg = b"skyroute escrow bench";
    let sig = k.sign(msg);
    let pk = k.public_key();
    let t = Instant::now();
    let mut ok = 0;
    for _ in 0..4000 {
        ok += pk.verify(msg, &sig) as usize;
    }
    let verify_per_s = ok as f64 / t.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;

    // Every receipt of a different route (each checked), through the API: the first half of
    // the interleaved stream.
    let mixed = interleave(&all);
    let half = n / 2;
    let t = Instant::now();
    let mut paid = 0usize;
    for b in mixed[..half].chunks(BATCH) {
        paid += e.settle(b).expect("settle").iter().filter(|r| r.is_ok()).count();
    }
    let api = half as f64 / t.elapsed().as_secs_f64();
    assert_eq!(paid, half, "every receipt paid");

    // The rest through the process's JSON-lines server (in a thread here).
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || skyroute_escrow::server::run(e, listener));
    let s = TcpStream::connect(addr).expect("connect");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut s = s;
    let mut send = |items: &[Settle]| {
        let req = serde_json::json!({ "cmd": "settle", "items": items });
        s.write_all(format!("{req}\n").as_bytes()).expect("write");
        let mut line = String::new();
        r.read_line(&mut line).expect("read");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        v["results"].as_array().map_or(0, |a| a.iter().filter(|x| x["paid"].is_u64()).count())
    };
    let t = Instant::now();
    let mut paid = 0;
    for b in mixed[half..].chunks(BATCH) {
        paid += send(b);
    }
    let tcp = (n - half) as f64 / t.elapsed().as_secs_f64();
    assert_eq!(paid, n - half, "every receipt paid");
    // Cumulative receipts as a relay collects them (several of one route in a batch: only the
    // newest is checked and pays), on fresh routes.
    let fresh = {
        let db = std::env::temp_dir().join(format!("skyroute-escrow-bench2-{}", std::process::id()));
        let _ = std::fs::remove_file(&db);
        let e2 = Escrow::open(&db, Box::new(Faucet)).expect("open");
        let (a, sec) = e2.open_account().expect("account");
        let (h, _) = e2.open_account().expect("account");
        e2.deposit(&a, 1_000_000 * COIN).expect("deposit");
        let rs = receipts(&e2, &a, &sec, &h);
        let t = Instant::now();
        let mut last_paid = 0;
        for b in rs.chunks(BATCH) {
            last_paid += e2.settle(b).expect("settle").iter().filter(|r| r.is_ok()).count();
        }
        let rate = rs.len() as f64 / t.elapsed().as_secs_f64();
        assert_eq!(last_paid, ROUTES, "the newest receipt of each route paid");
        let _ = std::fs::remove_file(&db);
        rate
    };

    // Signature checks per receipt: two for a route's first, one for each later one.
    let checks = 1.0 + 1.0 / PER_ROUTE as f64;
    let bound = verify_per_s * cores / checks;
    println!("\nescrow load ({n} receipts from {ROUTES} routes, batches of {BATCH}, {cores} cores)");
    println!("{:<52}{:>12}", "what", "figure");
    println!("{:<52}{:>12.0}", "raw ECDSA verifications/s, one core", verify_per_s);
    println!("{:<52}{:>12.0}", "receipts settled/s, each checked, API", api);
    println!("{:<52}{:>12.0}", "receipts settled/s, each checked, JSON over TCP", tcp);
    println!("{:<52}{:>12.0}", "receipts/s, cumulative stream (newest per batch)", fresh);
    println!("{:<52}{:>12.2}", "API / (verifications/s x cores / checks per receipt)", api / bound);
    println!("{:<52}{:>12.2}", "TCP / (verifications/s x cores / checks per receipt)", tcp / bound);
    let _ = std::fs::remove_dir_all(dir);
}
