//! The escrow: settlement of route receipts between anonymous accounts, through its API and as
//! its own process (killed with SIGKILL in the middle of a stream of settlements).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand_core::OsRng;
use skyroute_escrow::{settle_request, Escrow, EscrowError, Faucet, Settle, COIN};
use skyroute_proto::accounting::{Payee, Payer, Policy, Receipt, MIB};
use skyroute_proto::{Class, SecretKey};

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("skyroute-escrow-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A route's source and one hop (fresh route keys), and a receipt for `mib` MiB at 1000/MiB.
struct Route {
    payer: Payer,
    payee: Payee,
    payee_key: SecretKey,
}

impl Route {
    fn new() -> Route {
        let payer = Payer::new(SecretKey::generate(&mut OsRng), u32::MAX, 0);
        let payee_key = SecretKey::generate(&mut OsRng);
        let payee = Payee::new(payee_key.clone(), payer.public_key(), 1000, MIB, Duration::from_secs(5), Policy::Drop);
        Route { payer, payee, payee_key }
    }

    fn carry(&mut self, mib: u64) -> Receipt {
        self.payer.count_sent(mib * MIB);
        self.payee.count(Class::Bulk, mib * MIB);
        let c = self.payee.claim().expect("something to claim");
        self.payer.on_claim(&c).expect("a receipt")
    }
}

#[test]
fn receipts_pay_once_and_only_from_what_the_payer_holds() {
    let dir = tmp("api");
    let e = Escrow::open(&dir.join("e.redb"), Box::new(Faucet)).unwrap();
    let (src, src_secret) = e.open_account().unwrap();
    let (hop, hop_secret) = e.open_account().unwrap();
    e.deposit(&src, 3 * COIN).unwrap();
    let mut route = Route::new();
    e.authorize(&src, &src_secret, &route.payer.public_key()).unwrap();
    assert_eq!(e.authorize(&src, &src_secret, &route.payer.public_key()), Err(EscrowError::KeyTaken));
    let r1 = route.carry(100);
    let s1 = settle_request(&route.payee_key, &r1, &hop);
    let paid = |v: Vec<Result<skyroute_escrow::Settled, EscrowError>>| v.into_iter().next().unwrap();
    assert_eq!(paid(e.settle(std::slice::from_ref(&s1)).unwrap()).unwrap().paid, 100_000);
    // The same receipt again pays nothing; a newer one pays the difference; the older one
    // after it pays nothing.
    assert_eq!(paid(e.settle(std::slice::from_ref(&s1)).unwrap()), Err(EscrowError::NothingNew));
    let r2 = route.carry(50);
    let s2 = settle_request(&route.payee_key, &r2, &hop);
    assert_eq!(paid(e.settle(&[s2]).unwrap()).unwrap().paid, 50_000);
    assert_eq!(paid(e.settle(&[s1]).unwrap()), Err(EscrowError::NothingNew));
    assert_eq!(e.balance(&hop, &hop_secret).unwrap(), 150_000);
    // Two receipts of the route in one batch: the newer pays, the older is superseded.
    let (ra, rb) = (route.carry(5), route.carry(5));
    let out =
        e.settle(&[settle_request(&route.payee_key, &ra, &hop), settle_request(&route.payee_key, &rb, &hop)]).unwrap();
    assert_eq!(out, vec![Err(EscrowError::Superseded), Ok(skyroute_escrow::Settled { paid: 10_000 })]);
    assert_eq!(e.balance(&src, &src_secret).unwrap(), 3 * COIN - 160_000);
    let hop_before_fresh = e.balance(&hop, &hop_secret).unwrap();
    // Someone else cannot settle the hop's receipt into another account: the route key is
    // bound to the hop's account since its first (signed) settlement, whoever signs.
    let (thief_acct, _) = e.open_account().unwrap();
    let thief = SecretKey::generate(&mut OsRng);
    let r3 = route.carry(10);
    assert_eq!(paid(e.settle(&[settle_request(&thief, &r3, &thief_acct)]).unwrap()), Err(EscrowError::BadSignature));
    assert_eq!(
        paid(e.settle(&[settle_request(&route.payee_key, &r3, &thief_acct)]).unwrap()),
        Err(EscrowError::PayeeBound)
    );
    // A new route's first settlement needs the payee's signature, and a bad one binds nothing.
    let mut fresh = Route::new();
    e.authorize(&src, &src_secret, &fresh.payer.public_key()).unwrap();
    let rf = fresh.carry(1);
    assert_eq!(paid(e.settle(&[settle_request(&thief, &rf, &thief_acct)]).unwrap()), Err(EscrowError::BadSignature));
    assert_eq!(paid(e.settle(&[settle_request(&fresh.payee_key, &rf, &hop)]).unwrap()).unwrap().paid, 1_000);
    // Once bound, a later receipt of the route pays the bound account with the receipt's own
    // signature alone (the payee's is not checked again; it could only pay the hop).
    let mut unsigned = settle_request(&thief, &fresh.carry(1), &hop);
    unsigned.payee_sig.clear();
    assert_eq!(paid(e.settle(&[unsigned]).unwrap()).unwrap().paid, 1_000);
    assert_eq!(e.balance(&hop, &hop_secret).unwrap(), hop_before_fresh + 2_000);
    let mut forged = settle_request(&route.payee_key, &r3, &hop);
    forged.receipt.replace_range(150..152, "ff"); // the amount's top byte
    assert!(paid(e.settle(&[forged]).unwrap()).is_err());
    // A payer key nobody authorised, and a receipt the balance cannot cover: refused whole.
    let mut stranger = Route::new();
    let rs = stranger.carry(1);
    assert_eq!(
        paid(e.settle(&[settle_request(&stranger.payee_key, &rs, &hop)]).unwrap()),
        Err(EscrowError::UnknownPayer)
    );
    let big = route.carry(5_000);
    let before = e.balance(&src, &src_secret).unwrap();
    assert!(matches!(
        paid(e.settle(&[settle_request(&route.payee_key, &big, &hop)]).unwrap()),
        Err(EscrowError::Insufficient { .. })
    ));
    assert_eq!(e.balance(&src, &src_secret).unwrap(), before, "nothing moved");
    // Balances need the secret; withdrawals need a whole coin.
    assert_eq!(e.balance(&hop, &src_secret), Err(EscrowError::NoAccount));
    assert!(matches!(e.withdraw(&hop, &hop_secret, "addr1", 1), Err(EscrowError::BelowThreshold { .. })));
    let txid = e.withdraw(&src, &src_secret, "fresh-address", COIN).unwrap();
    assert!(!txid.is_empty());
    assert_eq!(e.total().unwrap() + e.withdrawn().unwrap(), 3 * COIN, "coins are conserved");
    let _ = std::fs::remove_dir_all(dir);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, .. ProptestConfig::default() })]
    /// Threads settling against one payer account at once never overdraw it, never pay a
    /// receipt twice, and conserve coins.
    #[test]
    fn concurrent_settlements_never_overdraw(deposit in 1u64..400, mibs in proptest::collection::vec(1u64..60, 8..24)) {
        let dir = tmp(&format!("prop-{deposit}-{}", mibs.len()));
        let e = Escrow::open(&dir.join("e.redb"), Box::new(Faucet)).unwrap();
        let (src, secret) = e.open_account().unwrap();
        e.deposit(&src, deposit * 1000).unwrap();
        let (hop, hop_secret) = e.open_account().unwrap();
        let requests: Vec<Settle> = mibs
            .iter()
            .map(|m| {
                let mut r = Route::new();
                e.authorize(&src, &secret, &r.payer.public_key()).unwrap();
                let receipt = r.carry(*m);
                settle_request(&r.payee_key, &receipt, &hop)
            })
            .collect();
        // Every request twice, from four threads at once.
        let paid: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|t| {
                    let (e, requests) = (&e, &requests);
                    s.spawn(move || {
                        requests
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| i % 2 == t % 2)
                            .map(|(_, r)| e.settle(std::slice::from_ref(r)).unwrap()[0].as_ref().map_or(0, |x| x.paid))
                            .sum::<u64>()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let src_balance = e.balance(&src, &secret).unwrap();
        prop_assert_eq!(src_balance + paid, deposit * 1000);
        prop_assert_eq!(e.balance(&hop, &hop_secret).unwrap(), paid);
        prop_assert!(paid <= mibs.iter().sum::<u64>() * 1000, "no receipt paid twice");
        prop_assert_eq!(e.total().unwrap(), deposit * 1000);
        let _ = std::fs::remove_dir_all(dir);
    }
}

struct Process {
    child: Child,
    addr: String,
}

/// Runs the escrow as its own process: this test binary again, running only
/// [`escrow_process`] (the `skyroute escrow` command runs the same server).
fn start(dir: &std::path::Path) -> Process {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "escrow_process", "--ignored", "--nocapture", "--test-threads=1"])
        .env("SKYROUTE_ESCROW_DIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split_whitespace().nth(2).expect("the address").to_string();
    Process { child, addr }
}

/// The escrow server, when [`start`] runs this binary as a child (ignored otherwise).
#[test]
#[ignore = "the escrow process of kill_9_during_settlements_loses_or_doubles_nothing"]
fn escrow_process() {
    let Some(dir) = std::env::var_os("SKYROUTE_ESCROW_DIR") else { return };
    let dir = std::path::PathBuf::from(dir);
    let escrow = Escrow::open(&dir.join("escrow.redb"), Box::new(Faucet)).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    eprintln!("escrow listening {}", listener.local_addr().unwrap());
    skyroute_escrow::server::run(escrow, listener).unwrap();
}

/// One request and its answer (`Null` if the connection broke).
fn ask(s: &mut (TcpStream, BufReader<TcpStream>), req: &serde_json::Value) -> serde_json::Value {
    if s.0.write_all(format!("{req}\n").as_bytes()).is_err() {
        return serde_json::Value::Null;
    }
    let mut line = String::new();
    match s.1.read_line(&mut line) {
        Ok(n) if n > 0 => serde_json::from_str(&line).unwrap_or(serde_json::Value::Null),
        _ => serde_json::Value::Null,
    }
}

fn connect(p: &Process) -> (TcpStream, BufReader<TcpStream>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = TcpStream::connect(&p.addr) {
            let r = BufReader::new(s.try_clone().unwrap());
            return (s, r);
        }
        assert!(Instant::now() < deadline, "escrow up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL in the middle of a stream of settlements: after a restart every settlement is
/// either fully applied or not at all, sending them all again pays each exactly once, and
/// no coin appears or vanishes.
#[test]
fn kill_9_during_settlements_loses_or_doubles_nothing() {
    let dir = tmp("kill");
    let p = start(&dir);
    let mut s = connect(&p);
    let open = ask(&mut s, &serde_json::json!({"cmd": "open"}));
    let (src, secret) = (open["account"].as_str().unwrap().to_string(), open["secret"].as_str().unwrap().to_string());
    let hop = ask(&mut s, &serde_json::json!({"cmd": "open"}))["account"].as_str().unwrap().to_string();
    assert_eq!(ask(&mut s, &serde_json::json!({"cmd": "deposit", "account": src, "amount": 100 * COIN}))["ok"], true);
    let mut requests = Vec::new();
    let mut expected = 0;
    for i in 0..400u64 {
        let mut r = Route::new();
        let a = ask(
            &mut s,
            &serde_json::json!({"cmd": "authorize", "account": src, "secret": secret, "payer": r.payer.public_key().to_string()}),
        );
        assert_eq!(a["ok"], true, "{a}");
        let receipt = r.carry(1 + i % 7);
        expected += receipt.amount;
        requests.push(settle_request(&r.payee_key, &receipt, &hop));
    }
    // Stream them one by one from another thread; kill the escrow part way.
    let addr = p.addr.clone();
    let sent = requests.clone();
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = progress.clone();
    let streamer = std::thread::spawn(move || {
        let Ok(c) = TcpStream::connect(&addr) else { return 0 };
        let mut c = (c.try_clone().unwrap(), BufReader::new(c));
        let mut answered = 0;
        for r in &sent {
            let v = ask(&mut c, &serde_json::json!({"cmd": "settle", "items": [r]}));
            if v.is_null() {
                break;
            }
            answered += 1;
            seen.store(answered, std::sync::atomic::Ordering::SeqCst);
        }
        answered
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.load(std::sync::atomic::Ordering::SeqCst) < 100 {
        assert!(Instant::now() < deadline, "settlements flow");
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut p = p;
    let _ = Command::new("kill").args(["-9", &p.child.id().to_string()]).status();
    let _ = p.child.wait();
    let answered = streamer.join().unwrap();
    assert!(answered > 0 && answered < requests.len(), "killed mid-stream ({answered} answered)");
    // Restart: consistent, then everything again.
    let p2 = start(&dir);
    let mut s = connect(&p2);
    let bal = |s: &mut _, acct: &str, sec: &str| {
        ask(s, &serde_json::json!({"cmd": "balance", "account": acct, "secret": sec}))["balance"].as_u64().unwrap()
    };
    let src_before = bal(&mut s, &src, &secret);
    assert!(src_before <= 100 * COIN);
    let reply = ask(&mut s, &serde_json::json!({"cmd": "settle", "items": requests}));
    let results = reply["results"].as_array().unwrap();
    let again: u64 = results.iter().filter_map(|r| r["paid"].as_u64()).sum();
    assert!(results.iter().filter(|r| r["error"].is_string()).count() >= answered, "the applied ones pay nothing new");
    assert_eq!(100 * COIN - src_before + again, expected, "each receipt paid exactly once");
    assert_eq!(bal(&mut s, &src, &secret), 100 * COIN - expected);
    let mut p2 = p2;
    let _ = p2.child.kill();
    let _ = p2.child.wait();
    let _ = std::fs::remove_dir_all(dir);
}
