//! Network namespaces for end-to-end tests and benches (root only): namespaces joined by veth
//! pairs, `skyroute node` daemons inside them, and threads that run inside a namespace. Every
//! namespace and daemon is removed when the [`Net`] is dropped, also when a test fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether this process may create network namespaces (root).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub struct Net {
    /// Prefix of every namespace name (unique per process).
    tag: String,
    namespaces: Vec<String>,
    daemons: Vec<(String, Child)>,
    pub dir: PathBuf,
}

/// Runs a command; panics with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Net {
    pub fn new(tag: &str) -> Net {
        let tag = format!("sk{}{tag}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("skyroute-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Net { tag, namespaces: Vec::new(), daemons: Vec::new(), dir }
    }

    /// The full name of namespace `name`.
    pub fn ns_name(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    /// Creates namespace `name` with its loopback up.
    pub fn ns(&mut self, name: &str) {
        let n = self.ns_name(name);
        let _ = Command::new("ip").args(["netns", "del", &n]).stderr(Stdio::null()).status();
        sh(&["ip", "netns", "add", &n]);
        self.namespaces.push(n);
        self.exec(name, &["ip", "link", "set", "lo", "up"]);
    }

    /// Runs `args` inside namespace `name`; panics if it fails.
    pub fn exec(&self, name: &str, args: &[&str]) -> String {
        let n = self.ns_name(name);
        let mut all = vec!["ip", "netns", "exec", &n];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// Runs `args` inside namespace `name`; its exit status and output, whatever they are.
    pub fn try_exec(&self, name: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns_name(name)])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    }

    /// A veth pair: `a_if` with `a_addr` (CIDR) in namespace `a`, `b_if` with `b_addr` in `b`.
    pub fn link(&self, a: &str, a_if: &str, a_addr: &str, b: &str, b_if: &str, b_addr: &str) {
        let (na, nb) = (self.ns_name(a), self.ns_name(b));
        sh(&["ip", "link", "add", a_if, "netns", &na, "type", "veth", "peer", "name", b_if, "netns", &nb]);
        self.exec(a, &["ip", "addr", "add", a_addr, "dev", a_if]);
        self.exec(b, &["ip", "addr", "add", b_addr, "dev", b_if]);
        self.exec(a, &["ip", "link", "set", a_if, "up"]);
        self.exec(b, &["ip", "link", "set", b_if, "up"]);
    }

    /// A node's data directory with a fresh identity; returns (dir, public key hex).
    pub fn identity(&self, node: &str) -> (PathBuf, String) {
        let dir = self.dir.join(node);
        let out = sh(&[env!("CARGO_BIN_EXE_skyroute"), "keygen", "--data-dir", dir.to_str().unwrap()]);
        let key = out
            .lines()
            .find_map(|l| l.strip_prefix("public key: "))
            .unwrap_or_else(|| panic!("keygen printed no key: {out}"))
            .trim()
            .to_string();
        (dir, key)
    }

    /// Starts `skyroute node` in namespace `ns` with `config` (TOML) and waits for its control
    /// socket. Its log goes to `<data dir>/node.log`.
    pub fn daemon(&mut self, ns: &str, data_dir: &Path, config: &str) {
        let cfg = data_dir.join("node.toml");
        std::fs::write(&cfg, config).unwrap();
        // A socket a killed daemon left must not pass for the new one's.
        let _ = std::fs::remove_file(data_dir.join("control.sock"));
        let log = std::fs::File::create(data_dir.join("node.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns_name(ns), env!("CARGO_BIN_EXE_skyroute"), "node", "--data-dir"])
            .arg(data_dir)
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemons.push((data_dir.display().to_string(), child));
        let sock = data_dir.join("control.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            let exited = self.daemons.last_mut().and_then(|(_, c)| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "the daemon exited ({exited:?}): {}", self.log(data_dir));
            assert!(Instant::now() < deadline, "no control socket: {}", self.log(data_dir));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the daemon of `data_dir` with SIGTERM and waits for it (its exit status).
    pub fn stop(&mut self, data_dir: &Path) -> Option<std::process::ExitStatus> {
        let key = data_dir.display().to_string();
        let i = self.daemons.iter().position(|(d, _)| *d == key)?;
        let (_, mut child) = self.daemons.remove(i);
        terminate(&mut child)
    }

    /// Kills the daemon of `data_dir` with SIGKILL (a crash: nothing of it cleans up).
    pub fn kill(&mut self, data_dir: &Path) {
        let key = data_dir.display().to_string();
        if let Some(i) = self.daemons.iter().position(|(d, _)| *d == key) {
            let (_, mut child) = self.daemons.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self, data_dir: &Path) -> String {
        std::fs::read_to_string(data_dir.join("node.log")).unwrap_or_default()
    }

    /// Runs `f` on a thread inside namespace `ns` (sockets it opens live there).
    pub fn thread<T: Send + 'static>(
        &self,
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.ns_name(ns));
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns with an open namespace fd; it only affects this thread.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

/// SIGTERM, then SIGKILL after 10 s.
fn terminate(child: &mut Child) -> Option<std::process::ExitStatus> {
    // `ip netns exec` execs the program, so the child is the daemon itself.
    // SAFETY: kill with a pid we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

impl Drop for Net {
    fn drop(&mut self) {
        for (_, mut c) in self.daemons.drain(..) {
            terminate(&mut c);
        }
        for n in self.namespaces.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &n]).status();
            // Files a test gave the namespace (/etc/netns/NAME/resolv.conf) go with it.
            let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(&n));
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A TCP server in the calling thread's namespace: each accepted connection gets `bytes` of
/// generated data at about `rate` bytes/s; returns each peer's address and the SHA-256 of what
/// it sent. Serves `connections` connections, then returns. `verify` false: zeros, no hash
/// (a throughput baseline the hashing does not limit).
pub fn serve(
    listener: std::net::TcpListener,
    connections: usize,
    bytes: u64,
    rate: Option<u64>,
    verify: bool,
) -> Vec<(std::net::SocketAddr, String)> {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    let mut out = Vec::new();
    for _ in 0..connections {
        let Ok((mut s, peer)) = listener.accept() else { break };
        let mut h = Sha256::new();
        let start = Instant::now();
        let mut sent = 0u64;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut chunk = vec![0u8; 64 * 1024];
        while sent < bytes {
            let n = chunk.len().min((bytes - sent) as usize);
            if !verify {
                if s.write_all(&chunk[..n]).is_err() {
                    break;
                }
                sent += n as u64;
                continue;
            }
            for w in chunk[..n].chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let b = x.to_le_bytes();
                w.copy_from_slice(&b[..w.len()]);
            }
            if s.write_all(&chunk[..n]).is_err() {
                break;
            }
            h.update(&chunk[..n]);
            sent += n as u64;
            if let Some(r) = rate {
                let due = Duration::from_secs_f64(sent as f64 / r as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        out.push((peer, hex::encode(h.finalize())));
    }
    out
}

/// Downloads from `addr` until the server closes: (bytes, SHA-256 if `verify`, time), or the
/// error (a reset shows up here).
pub fn download(addr: std::net::SocketAddr, verify: bool) -> std::io::Result<(u64, String, Duration)> {
    download_timed(addr, verify).map(|(bytes, sha, took, _)| (bytes, sha, took))
}

/// [`download`], also returning the longest wait between two reads after the first (a stall).
pub fn download_timed(addr: std::net::SocketAddr, verify: bool) -> std::io::Result<(u64, String, Duration, Duration)> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let start = Instant::now();
    let mut last: Option<Instant> = None;
    let mut worst = Duration::ZERO;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let now = Instant::now();
        if let Some(l) = last {
            worst = worst.max(now - l);
        }
        last = Some(now);
        if verify {
            h.update(&buf[..n]);
        }
        total += n as u64;
    }
    Ok((total, hex::encode(h.finalize()), start.elapsed(), worst))
}
