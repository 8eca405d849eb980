//! `skyroute node` and `skyroute status` as processes on loopback.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_skyroute"))
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("skyroute-daemon-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A node process, stopped with SIGTERM when dropped.
struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, config: &str) -> Daemon {
        let cfg = dir.join("node.toml");
        std::fs::write(&cfg, config).unwrap();
        let child = bin()
            .args(["node", "--data-dir", dir.to_str().unwrap(), "--config", cfg.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Daemon { child, dir: dir.to_path_buf() }
    }

    /// `skyroute status --json`, retried until `ok` holds (10 s at most).
    fn status_until(&self, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = bin().args(["status", "--json", "--data-dir", self.dir.to_str().unwrap()]).output().unwrap();
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                if ok(&v) {
                    return v;
                }
            }
            assert!(Instant::now() < deadline, "status never matched: {}", String::from_utf8_lossy(&out.stdout));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn terminate(mut self) -> i32 {
        // The shell's built-in kill: no dependency on a kill binary being installed.
        Command::new("sh").args(["-c", &format!("kill -TERM {}", self.child.id())]).status().unwrap();
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

#[test]
fn two_nodes_link_up_over_udp_and_report_status() {
    let (da, db) = (tmpdir("a"), tmpdir("b"));
    let b = Daemon::start(&db, "listen = \"127.0.0.1:0\"\n");
    let sb = b.status_until(|v| v["listen"][0].is_string());
    let b_addr = sb["listen"][0].as_str().unwrap().trim_start_matches("udp ").to_string();
    let b_key = sb["public_key"].as_str().unwrap().to_string();
    assert!(db.join("identity.key").exists(), "identity created on first start");

    let a =
        Daemon::start(&da, &format!("listen = \"127.0.0.1:0\"\n[[peers]]\nkey = \"{b_key}\"\naddr = \"{b_addr}\"\n"));
    let sa = a.status_until(|v| v["links"][0]["state"] == "up");
    assert_eq!(sa["links"][0]["peer"], b_key);
    assert_eq!(sa["links"][0]["transport"], "udp");
    let a_key = sa["public_key"].as_str().unwrap().to_string();
    let sb = b.status_until(|v| v["links"][0]["state"] == "up");
    assert_eq!(sb["links"][0]["peer"], a_key);

    // The human table names the peer too.
    let table = bin().args(["status", "--data-dir", da.to_str().unwrap()]).output().unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).contains(&b_key[..16]));

    // A malformed control request gets an error reply, and the node keeps serving.
    let mut s = std::os::unix::net::UnixStream::connect(da.join("control.sock")).unwrap();
    s.write_all(b"this is not json\n").unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["ok"], false);
    assert!(reply["error"].as_str().unwrap().contains("bad request"));
    a.status_until(|v| v["links"][0]["state"] == "up");

    assert_eq!(a.terminate(), 0, "SIGTERM: clean exit");
    assert_eq!(b.terminate(), 0);
    assert!(!da.join("control.sock").exists(), "control socket removed");
    let _ = std::fs::remove_dir_all(&da);
    let _ = std::fs::remove_dir_all(&db);
}

#[test]
fn bad_config_is_one_line_naming_the_field() {
    let d = tmpdir("bad");
    let cfg = d.join("bad.toml");
    std::fs::write(&cfg, "[[peers]]\nkey = \"not a key\"\naddr = \"127.0.0.1:1\"\n").unwrap();
    let out =
        bin().args(["node", "--data-dir", d.to_str().unwrap(), "--config", cfg.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("peers[0].key"), "{err}");
    let out = bin().args(["status", "--data-dir", d.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success(), "no node running there");
    let _ = std::fs::remove_dir_all(&d);
}
