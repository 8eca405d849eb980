//! The C firmware example (hw/router, linked against the static library through the header)
//! relays a 10 MiB transfer between two Rust nodes on loopback, natively and as an aarch64
//! binary under qemu-aarch64; hw/router's bad-call checker runs the same two ways. The
//! binaries come from `make -C hw/router` (tests/run.sh builds both); without them the tests
//! skip, unless SKYROUTE_REQUIRE_HW=1 (tests/run.sh sets it) makes that a failure.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand_core::OsRng;
use skyroute::driver::{Options, RunningNode};
use skyroute::service::transfer::Source;
use skyroute::transport::Addr;
use skyroute_proto::{Event, SecretKey};

const AARCH64: &str = "aarch64-unknown-linux-gnu";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The built example binary for `target` (None: this machine), or None to skip.
fn binary(target: Option<&str>, name: &str) -> Option<PathBuf> {
    let p = root().join("hw/router/build").join(target.unwrap_or("host")).join(name);
    if p.exists() {
        return Some(p);
    }
    let msg = format!(
        "{} is not built (make -C hw/router{})",
        p.display(),
        target.map(|t| format!(" TARGET={t}")).unwrap_or_default()
    );
    assert!(std::env::var_os("SKYROUTE_REQUIRE_HW").is_none(), "{msg}");
    eprintln!("SKIPPED: {msg}");
    None
}

/// The command that runs `bin` (under qemu for aarch64).
fn command(target: Option<&str>, bin: &Path) -> Command {
    match target {
        None => Command::new(bin),
        Some(_) => {
            let mut c = Command::new("qemu-aarch64");
            c.args(["-L", "/usr/aarch64-linux-gnu"]).arg(bin);
            c
        }
    }
}

fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct Router {
    child: Child,
    key: String,
    udp: Addr,
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the C router with `config`; waits for its "ready" line.
fn start_router(target: Option<&str>, bin: &Path, config: &str, dir: &Path) -> Router {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("router.toml");
    std::fs::write(&cfg, config).unwrap();
    let mut child = command(target, bin)
        .arg(&cfg)
        .arg(dir.join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let (mut key, mut udp) = (None, None);
    loop {
        let l = rx.recv_timeout(Duration::from_secs(60)).expect("the router prints ready");
        if let Some(k) = l.strip_prefix("public_key ") {
            key = Some(k.to_string());
        } else if let Some(a) = l.strip_prefix("listen ") {
            udp = Some(a.parse::<Addr>().unwrap());
        } else if l == "ready" {
            break;
        }
    }
    // Keep draining its output (the final "stopped").
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Router { child, key: key.unwrap(), udp: udp.unwrap() }
}

async fn link_up(n: &mut RunningNode) {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(30), n.events.recv()).await.expect("link up in time");
        if matches!(e, Some(Event::LinkUp { .. })) {
            return;
        }
    }
}

async fn relay_through_c_router(target: Option<&str>) {
    let Some(bin) = binary(target, "router") else { return };
    let dir = std::env::temp_dir().join(format!("skyroute-hw-{}-{}", target.unwrap_or("host"), std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut a = RunningNode::spawn(Options::loopback(SecretKey::generate(&mut OsRng))).await.unwrap();
    let mut b = RunningNode::spawn(Options::loopback(SecretKey::generate(&mut OsRng))).await.unwrap();
    let config = format!(
        "[listen]\nudp = \"127.0.0.1:0\"\ntcp = \"off\"\nquic = \"off\"\n[[peers]]\nkey = \"{}\"\naddr = \"{}\"\n",
        b.public_key,
        b.udp_addr()
    );
    let mut router = start_router(target, &bin, &config, &dir);
    let rk = skyroute_proto::PublicKey::from_hex(&router.key).unwrap();
    a.connect(rk, router.udp).unwrap();
    a.add_topology(rk, b.public_key).unwrap();
    link_up(&mut a).await;
    link_up(&mut b).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = vm_rss_kib(router.child.id());

    let start = Instant::now();
    let t = a.transfer(b.public_key, Source::Bytes(10 << 20)).await.unwrap();
    assert!(t.ok && t.bytes == 10 << 20, "{t:?}");
    let got = b.received().await.unwrap();
    assert_eq!(got[0].sha256, t.sha256, "10 MiB intact through the C router");
    let s = a.status().await.unwrap();
    assert!(s.sessions[0].paths.iter().any(|p| p.hops.len() == 2 && p.hops[0] == router.key[..16]), "{s:?}");
    eprintln!(
        "hw/router {}: 10 MiB relayed in {:.2} s ({:.0} Mbit/s); idle RSS {:.1} MiB{}",
        target.unwrap_or("x86_64 host"),
        start.elapsed().as_secs_f64(),
        t.mbit_s,
        idle_rss as f64 / 1024.0,
        if target.is_some() { " (qemu-aarch64 included)" } else { "" }
    );
    if target.is_none() {
        assert!(idle_rss > 0 && idle_rss < 16 * 1024, "idle RSS {idle_rss} KiB (goal < 16 MiB)");
    }
    // SIGTERM: the router stops and frees the node, exit 0.
    // SAFETY: a pid this test spawned.
    unsafe { libc::kill(router.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = router.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the router did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "router exit {status:?}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    drop(router);
}

fn bad_calls(target: Option<&str>) {
    let Some(bin) = binary(target, "check") else { return };
    let dir = std::env::temp_dir().join(format!("skyroute-check-{}-{}", target.unwrap_or("host"), std::process::id()));
    let out = command(target, &bin).arg(&dir).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_router_relays_10_mib_on_this_machine() {
    relay_through_c_router(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_router_relays_10_mib_as_aarch64_under_qemu() {
    relay_through_c_router(Some(AARCH64)).await;
}

#[test]
fn bad_calls_get_error_codes_on_this_machine() {
    bad_calls(None);
}

#[test]
fn bad_calls_get_error_codes_as_aarch64_under_qemu() {
    bad_calls(Some(AARCH64));
}
