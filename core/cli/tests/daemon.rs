//! `skyroute node` processes on loopback, driven the way a user does: config files, the CLI
//! (`status`, `send`, `recv`, `ping`), signals.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_skyroute"))
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("skyroute-daemon-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const LOOPBACK: &str = "[listen]\nudp = \"127.0.0.1:0\"\ntcp = \"127.0.0.1:0\"\nquic = \"127.0.0.1:0\"\n";

/// A node process, killed when dropped.
struct Daemon {
    child: Child,
    dir: PathBuf,
    key: String,
    listen: Vec<String>,
}

impl Daemon {
    /// Starts a node with `config` (plus loopback listeners) and waits for its status.
    fn start(dir: &Path, config: &str) -> Daemon {
        let cfg = dir.join("node.toml");
        std::fs::write(&cfg, format!("{LOOPBACK}{config}")).unwrap();
        let log = std::fs::File::create(dir.join("node.log")).unwrap();
        let child = bin()
            .args(["node", "--data-dir", dir.to_str().unwrap(), "--config", cfg.to_str().unwrap()])
            .env("RUST_LOG", "debug")
            .stderr(log)
            .spawn()
            .unwrap();
        let mut d = Daemon { child, dir: dir.to_path_buf(), key: String::new(), listen: Vec::new() };
        let s = d.status_until(|v| v["listen"].as_array().is_some_and(|l| l.len() == 3));
        d.key = s["public_key"].as_str().unwrap().to_string();
        d.listen = s["listen"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        d
    }

    /// This node's address for a transport (`udp`, `tcp`, `quic`).
    fn addr(&self, transport: &str) -> String {
        self.listen.iter().find(|a| a.starts_with(transport)).unwrap().clone()
    }

    /// `[[peers]]` entry for this node over `transport`.
    fn peer(&self, transport: &str) -> String {
        format!("[[peers]]\nkey = \"{}\"\naddr = \"{}\"\n", self.key, self.addr(transport))
    }

    fn cli(&self, args: &[&str]) -> Output {
        bin().args(args).args(["--data-dir", self.dir.to_str().unwrap()]).output().unwrap()
    }

    /// `skyroute status --json`, retried until `ok` holds (15 s at most).
    fn status_until(&self, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = self.cli(&["status", "--json"]);
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                if ok(&v) {
                    return v;
                }
                assert!(Instant::now() < deadline, "status never matched: {v:#}\nlog: {}", self.log_tail());
            }
            assert!(Instant::now() < deadline, "no status: {}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn signal(&self, sig: &str) {
        // The shell's built-in kill: no dependency on a kill binary being installed.
        Command::new("sh").args(["-c", &format!("kill -{sig} {}", self.child.id())]).status().unwrap();
    }

    fn terminate(mut self) -> i32 {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "node did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn random_file(path: &Path, bytes: usize, seed: u64) -> String {
    let mut data = vec![0u8; bytes];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
    std::fs::write(path, &data).unwrap();
    hex::encode(Sha256::digest(&data))
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// `skyroute send --json` from `from` to `to`; the parsed report.
fn send(from: &Daemon, to: &Daemon, file: &Path) -> serde_json::Value {
    let out = from.cli(&["send", &to.key, file.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "send failed: {}\n{}\nsender log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
        from.log_tail()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A - B - C, every link over `transport`; A knows the B - C link from its config.
fn line(name: &str, transport: &str) -> (Daemon, Daemon, Daemon) {
    let (da, db, dc) = (tmpdir(&format!("{name}-a")), tmpdir(&format!("{name}-b")), tmpdir(&format!("{name}-c")));
    let c = Daemon::start(&dc, "");
    let b = Daemon::start(&db, &c.peer(transport));
    let a = Daemon::start(&da, &format!("{}[[topology]]\na = \"{}\"\nb = \"{}\"\n", b.peer(transport), b.key, c.key));
    b.status_until(|v| v["links"].as_array().unwrap().iter().filter(|l| l["state"] == "up").count() == 2);
    (a, b, c)
}

/// 20 MiB from A to C across two hops, as a file, intact at C (sha256 of the stored file).
fn twenty_mib_over(transport: &str) {
    let (a, b, c) = line(transport, transport);
    let file = a.dir.join("payload.bin");
    let sha = random_file(&file, 20 << 20, 20);
    let r = send(&a, &c, &file);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["bytes"], 20 << 20);
    assert_eq!(r["sha256"], sha);
    let recv = c.cli(&["recv", "--json", "--wait", "5"]);
    let list: serde_json::Value = serde_json::from_slice(&recv.stdout).unwrap();
    let path = list[0]["path"].as_str().expect("stored");
    assert_eq!(sha256_file(Path::new(path)), sha, "the stored file is intact");
    let sa = a.status_until(|_| true);
    assert_eq!(sa["links"][0]["transport"], transport);
    assert_eq!(sa["counters"]["quic_too_large"].as_u64().unwrap_or(0), 0, "link packets fit QUIC datagrams");
    eprintln!("{transport}: 20 MiB over 2 hops at {:.0} Mbit/s", r["mbit_s"].as_f64().unwrap());
    for d in [a, b, c] {
        let dir = d.dir.clone();
        assert_eq!(d.terminate(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn twenty_mib_over_two_udp_hops() {
    twenty_mib_over("udp");
}

#[test]
fn twenty_mib_over_two_tcp_hops() {
    twenty_mib_over("tcp");
}

#[test]
fn twenty_mib_over_two_quic_hops() {
    twenty_mib_over("quic");
}

#[test]
fn status_ping_and_control_errors() {
    let (a, b, c) = line("status", "udp");
    let sa = a.status_until(|v| v["links"][0]["state"] == "up");
    assert_eq!(sa["links"][0]["peer"], b.key.as_str());
    assert_eq!(sa["links"][0]["transport"], "udp");
    assert!(a.dir.join("identity.key").exists(), "identity created on first start");

    // Ping by address (the hash of the key), over a two-hop session.
    let addr = c.status_until(|_| true)["address"].as_str().unwrap().to_string();
    let out = a.cli(&["ping", &addr, "-c", "3", "--interval-ms", "20", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["received"], 3);
    let sa = a.status_until(|v| v["sessions"][0]["established"] == true);
    assert_eq!(sa["sessions"][0]["peer"], c.key.as_str());

    // The human table names the peer and the session.
    let table = String::from_utf8(a.cli(&["status"]).stdout).unwrap();
    assert!(table.contains(&b.key[..16]) && table.contains(&c.key[..16]), "{table}");

    // Malformed control requests get an error reply, and the node keeps serving.
    let mut s = std::os::unix::net::UnixStream::connect(a.dir.join("control.sock")).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for bad in ["this is not json", "{\"cmd\":\"fly\"}", "{\"cmd\":\"ping\"}", "{\"cmd\":\"ping\",\"peer\":\"zz\"}"] {
        s.write_all(format!("{bad}\n").as_bytes()).unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(reply["ok"], false, "{bad}: {reply}");
        assert!(reply["error"].as_str().unwrap().len() > 5);
    }
    s.write_all(&vec![b'x'; 100_000]).unwrap();
    s.write_all(b"\n").unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("longer than"), "{line}");
    // An unknown peer: a clear error, not a hang.
    let out = a.cli(&["ping", &"00".repeat(20)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no known node"));
    a.status_until(|v| v["links"][0]["state"] == "up");

    // A service registered on C's control socket gets A's messages on its channel; a message
    // for a channel nobody serves is answered on channel 0 and counted at both ends.
    let mut svc = std::os::unix::net::UnixStream::connect(c.dir.join("control.sock")).unwrap();
    svc.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut svc_r = BufReader::new(svc.try_clone().unwrap());
    svc.write_all(b"{\"cmd\":\"register\",\"channel\":100}\n").unwrap();
    let mut line = String::new();
    svc_r.read_line(&mut line).unwrap();
    assert!(line.contains("\"ok\":true"), "{line}");
    let msg = format!("{{\"cmd\":\"message\",\"peer\":\"{}\",\"channel\":100,\"data\":\"6869\"}}\n", c.key);
    s.write_all(msg.as_bytes()).unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("\"ok\":true"), "{line}");
    let mut got = String::new();
    svc_r.read_line(&mut got).unwrap();
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(
        (got["event"].as_str(), got["channel"].as_u64(), got["data"].as_str()),
        (Some("message"), Some(100), Some("6869"))
    );
    assert_eq!(got["peer"], a.key.as_str());
    // The node's own channels cannot be taken.
    s.write_all(b"{\"cmd\":\"register\",\"channel\":2}\n").unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("\"ok\":false") && line.contains("node's own"), "{line}");
    let unserved = format!("{{\"cmd\":\"message\",\"peer\":\"{}\",\"channel\":101,\"data\":\"00\"}}\n", c.key);
    s.write_all(unserved.as_bytes()).unwrap();
    c.status_until(|v| v["counters"]["no_service"] == 1);
    a.status_until(|v| v["counters"]["peer_no_service"] == 1);

    for d in [a, b, c] {
        let dir = d.dir.clone();
        assert_eq!(d.terminate(), 0, "SIGTERM: clean exit");
        assert!(!dir.join("control.sock").exists(), "control socket removed");
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn no_arguments_uses_home_and_default_ports() {
    let home = tmpdir("home");
    let log = std::fs::File::create(home.join("node.log")).unwrap();
    let mut child = bin().arg("node").env("HOME", &home).stderr(log).spawn().unwrap();
    let data = home.join(".local/share/skyroute");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let out = bin().arg("status").arg("--json").env("HOME", &home).output().unwrap();
        if out.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
        }
        assert!(Instant::now() < deadline, "{}", std::fs::read_to_string(home.join("node.log")).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(data.join("identity.key").exists());
    let listen: Vec<&str> = status["listen"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(listen.len(), 3, "{listen:?}");
    assert!(listen[0].starts_with("udp://0.0.0.0:") && listen[2].starts_with("quic://"), "{listen:?}");
    Command::new("sh").args(["-c", &format!("kill -INT {}", child.id())]).status().unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0), "SIGINT: clean exit");
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn bad_config_is_one_line_naming_the_field() {
    let d = tmpdir("bad");
    let cfg = d.join("bad.toml");
    for (text, field) in [
        ("[[peers]]\nkey = \"not a key\"\naddr = \"127.0.0.1:1\"\n", "peers[0].key"),
        ("[listen]\nquic = \"localhost\"\n", "listen.quic"),
        ("[session]\nroutes = 99\n", "session.routes"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let out = bin()
            .args(["node", "--data-dir", d.to_str().unwrap(), "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(field), "{err}");
    }
    let out = bin().args(["status", "--data-dir", d.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success(), "no node running there");
    let _ = std::fs::remove_dir_all(&d);
}

/// A `skyroute impair` process between A and B: 30% loss each way, delay and jitter, and the
/// link cut for 0.4 s every 1.5 s. An 8 MiB file still arrives intact.
#[test]
fn transfer_through_the_impairment_proxy_at_30_percent_loss_with_flaps() {
    let (da, db, dc) = (tmpdir("imp-a"), tmpdir("imp-b"), tmpdir("imp-c"));
    let c = Daemon::start(&dc, "");
    let b = Daemon::start(&db, &c.peer("udp"));
    let listen = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let target = b.addr("udp").trim_start_matches("udp://").to_string();
    let mut proxy = bin()
        .args(["impair", "--listen", &listen.to_string(), "--forward", &target, "--loss", "0.3", "--delay", "2"])
        .args(["--jitter", "4", "--reorder", "0.02", "--down-every", "1.5", "--down-for", "0.4", "--seed", "9"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let a = Daemon::start(
        &da,
        &format!(
            "[[peers]]\nkey = \"{}\"\naddr = \"{listen}\"\n[[topology]]\na = \"{}\"\nb = \"{}\"\n",
            b.key, b.key, c.key
        ),
    );
    let file = a.dir.join("lossy.bin");
    let sha = random_file(&file, 8 << 20, 30);
    let r = send(&a, &c, &file);
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["sha256"], sha);
    // The link saw the proxy's losses, retransmitted them, and says so.
    let sa = a.status_until(|_| true);
    let loss = sa["links"][0]["loss"].as_f64().unwrap();
    assert!(sa["links"][0]["lost_packets"].as_u64().unwrap() > 1000 && (0.2..0.9).contains(&loss), "{sa:#}");
    for d in [a, b, c] {
        let dir = d.dir.clone();
        drop(d);
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

/// Junk at every port a node listens on, stalled and lying peers: the node counts them, keeps
/// serving its real peer, answers status, and stays small.
#[test]
fn junk_at_every_port_stalled_and_wrong_key_peers() {
    use std::net::{TcpStream, UdpSocket};
    let (dn, dr, dw) = (tmpdir("junk-n"), tmpdir("junk-r"), tmpdir("junk-w"));
    let n = Daemon::start(&dn, "");
    let r = Daemon::start(&dr, &n.peer("udp"));
    // W dials N's address believing it is some other key: N cannot open its handshake.
    let wrong = format!("[[peers]]\nkey = \"{}\"\naddr = \"{}\"\n", r.key, n.addr("udp"));
    let w = Daemon::start(&dw, &wrong);
    n.status_until(|v| v["links"][0]["state"] == "up");
    let sock = |t: &str| n.addr(t).split("://").nth(1).unwrap().parse::<std::net::SocketAddr>().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(77);
    let mut sizes: Vec<usize> = vec![0, 1, 2, 15, 16, 47, 48, 1199, 1200, 1440, 65_507];
    sizes.extend((0..200).map(|_| (rng.next_u32() % 65_508) as usize));

    // Random datagrams at the UDP and the QUIC port, and truncated QUIC Initial packets.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for &len in &sizes {
        let mut d = vec![0u8; len];
        rng.fill_bytes(&mut d);
        let _ = udp.send_to(&d, sock("udp"));
        let _ = udp.send_to(&d, sock("quic"));
    }
    for cut in [1usize, 5, 7, 20, 100, 600, 1199] {
        let mut initial = vec![0xc3, 0, 0, 0, 1, 8];
        initial.extend((0..1194).map(|_| rng.next_u32() as u8));
        let _ = udp.send_to(&initial[..cut.min(initial.len())], sock("quic"));
    }
    // Random TCP payloads of all sizes, a peer that connects and stalls, and one that
    // announces a packet and stalls in the middle of it.
    let stalled = TcpStream::connect(sock("tcp")).unwrap();
    let mut half = TcpStream::connect(sock("tcp")).unwrap();
    half.write_all(&[0xff, 0xff, 1, 2, 3]).unwrap();
    for &len in sizes.iter().take(60) {
        let mut d = vec![0u8; len];
        rng.fill_bytes(&mut d);
        if let Ok(mut t) = TcpStream::connect(sock("tcp")) {
            let _ = t.write_all(&d);
        }
    }

    // N still serves its real peer (a session, both ways) and answers status.
    let out = r.cli(&["ping", &n.key, "-c", "3", "--interval-ms", "20", "--json"]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), n.log_tail());
    let sn = n.status_until(|v| v["rejected"].as_object().is_some_and(|m| !m.is_empty()));
    let rejected: u64 = sn["rejected"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert!(rejected >= 100, "junk refused and counted: {sn:#}");
    // Its mac1 is keyed by the key it believes it dials: refused before any ECDH.
    assert!(sn["rejected"].get("bad_mac").is_some(), "the wrong-key handshake is counted: {sn:#}");
    let sw = w.status_until(|_| true);
    assert_ne!(sw["links"][0]["state"], "up", "the lying peer never gets a link");
    let rss = rss_kib(n.child.id());
    eprintln!("after the junk: node RSS {rss} KiB, refused {rejected}: {}", sn["rejected"]);
    assert!(rss < 64 * 1024, "memory stays bounded: {rss} KiB");
    drop((stalled, half));
    for d in [n, r, w] {
        let dir = d.dir.clone();
        assert_eq!(d.terminate(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A - B - C and A - D - C. B is killed with SIGKILL in the middle of a 20 MiB transfer: the
/// session carries on over D and the file arrives intact.
#[test]
fn kill_9_of_a_middle_node_during_a_transfer() {
    let dirs: Vec<PathBuf> = ["a", "b", "c", "d"].iter().map(|n| tmpdir(&format!("kill-{n}"))).collect();
    let c = Daemon::start(&dirs[2], "");
    let b = Daemon::start(&dirs[1], &c.peer("udp"));
    let d = Daemon::start(&dirs[3], &c.peer("udp"));
    let topo = format!(
        "[[topology]]\na = \"{}\"\nb = \"{}\"\n[[topology]]\na = \"{}\"\nb = \"{}\"\n",
        b.key, c.key, d.key, c.key
    );
    let a = Daemon::start(&dirs[0], &format!("{}{}{topo}", b.peer("udp"), d.peer("udp")));
    a.status_until(|v| v["links"].as_array().unwrap().iter().filter(|l| l["state"] == "up").count() == 2);
    c.status_until(|v| v["links"].as_array().unwrap().iter().filter(|l| l["state"] == "up").count() == 2);
    let file = a.dir.join("big.bin");
    let sha = random_file(&file, 20 << 20, 99);
    let mut sender = bin()
        .args(["send", &c.key, file.to_str().unwrap(), "--json", "--data-dir", a.dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both routes carry the stream; then B dies mid-transfer.
    a.status_until(|v| {
        v["sessions"][0]["paths"].as_array().is_some_and(|p| p.iter().filter(|p| p["state"] == "live").count() == 2)
            && v["sessions"][0]["stream_bytes_confirmed"].as_u64().unwrap_or(0) > 256 << 10
    });
    b.signal("KILL");
    assert!(sender.try_wait().unwrap().is_none(), "B died while the transfer was running");
    let out = sender.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), a.log_tail());
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["ok"], true);
    assert_eq!(r["sha256"], sha);
    // A notices: the link to B goes down and the session keeps no path through B.
    a.status_until(|v| {
        let paths = v["sessions"][0]["paths"].as_array().unwrap();
        paths.iter().all(|p| p["hops"][0] != b.key[..16])
            && v["links"].as_array().unwrap().iter().any(|l| l["peer"] == b.key.as_str() && l["state"] != "up")
    });
    let recv: serde_json::Value = serde_json::from_slice(&c.cli(&["recv", "--json"]).stdout).unwrap();
    assert_eq!(sha256_file(Path::new(recv[0]["path"].as_str().unwrap())), sha);
    for n in [a, b, c, d] {
        let dir = n.dir.clone();
        drop(n);
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Quiet when idle (a phone's radio wakes for every packet): two daemons with a session open,
/// then a minute of nothing: at most WireGuard's keepalive rate per link, no rekey, an idle
/// session, all read from the daemons' status.
#[test]
fn an_idle_pair_with_a_session_is_quiet_for_a_minute() {
    let (da, db) = (tmpdir("idle-a"), tmpdir("idle-b"));
    let quiet = "[link]\nkeepalive_s = 25\n";
    let b = Daemon::start(&db, quiet);
    let a = Daemon::start(&da, &format!("{quiet}{}", b.peer("udp")));
    a.status_until(|v| v["links"][0]["state"] == "up");
    let out = a.cli(&["ping", &b.key, "-c", "3", "--interval-ms", "20", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The last acks, the rotation after the ping's traffic and the old key's grace settle.
    std::thread::sleep(Duration::from_secs(5));
    let counts = |d: &Daemon| {
        let s = d.status_until(|v| v["links"][0]["state"] == "up");
        let l = &s["links"][0];
        let n = |k: &str| l[k].as_u64().unwrap();
        let wakeups = s["counters"]["timer_wakeups"].as_u64().unwrap_or(0);
        (n("tx_packets"), n("rekeys"), n("handshakes"), s, wakeups)
    };
    let (a0, b0) = (counts(&a), counts(&b));
    assert_eq!(a0.3["sessions"][0]["established"], true);
    std::thread::sleep(Duration::from_secs(60));
    let (a1, b1) = (counts(&a), counts(&b));
    for (name, x, y) in [("a", &a0, &a1), ("b", &b0, &b1)] {
        assert!(y.0 - x.0 <= 3, "{name}: {} packets in an idle minute (keepalive 25 s)", y.0 - x.0);
        assert_eq!((y.1 - x.1, y.2 - x.2), (0, 0), "{name}: no rekey or handshake while idle");
        // The keepalives (2-3 in a minute) are the only timers an idle node asks for.
        assert!(y.4 - x.4 <= 4, "{name}: {} timer wakeups in an idle minute", y.4 - x.4);
        let l = &y.3["links"][0];
        assert!(l["packets_last_min"].as_u64().unwrap() <= 3, "{name}: {l}");
        assert_eq!(l["rekeys_last_min"], 0, "{name}: {l}");
    }
    let s = &a1.3["sessions"][0];
    assert_eq!((s["idle"].as_bool(), s["packets_last_min"].as_u64()), (Some(true), Some(0)), "{s}");
    assert!(a1.0 - a0.0 >= 2, "the keepalives did go out: {}", a1.0 - a0.0);
    // And the idle session still works at once.
    let out = a.cli(&["ping", &b.key, "-c", "1", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
