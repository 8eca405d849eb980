//! The `skyroute` binary: keygen and sim, as a user runs them.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn skyroute(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_skyroute")).args(args).output().expect("run skyroute")
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("skyroute-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn keygen_writes_0600_refuses_overwrite_and_shows() {
    let dir = tmpdir("keygen");
    let key = dir.join("id.key");
    let k = key.to_str().unwrap();
    let out = skyroute(&["keygen", "--out", k]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("public key: ") && text.contains("address: "), "{text}");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let again = skyroute(&["keygen", "--out", k]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let show = skyroute(&["keygen", "--show", k]);
    assert!(show.status.success());
    let shown = String::from_utf8(show.stdout).unwrap();
    assert!(text.contains(shown.lines().next().unwrap()), "same public key");

    let forced = skyroute(&["keygen", "--out", k, "--force"]);
    assert!(forced.status.success());
    let reshow = String::from_utf8(skyroute(&["keygen", "--show", k]).stdout).unwrap();
    assert_ne!(reshow, shown, "--force wrote a new key");

    std::fs::write(dir.join("bad.key"), "not a key").unwrap();
    let bad = skyroute(&["keygen", "--show", dir.join("bad.key").to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("malformed"));

    // Default location: <data dir>/identity.key.
    let dd = dir.join("data");
    let out = skyroute(&["keygen", "--data-dir", dd.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(dd.join("identity.key").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sim_eight_hop_json() {
    let out = skyroute(&["sim", "eight-hop", "--seed", "7", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["scenario"], "eight-hop");
    assert_eq!(v["seed"], 7);
    assert_eq!(v["bytes_sent"], 1 << 20);
    assert_eq!(v["bytes_delivered"], 1 << 20);
    assert_eq!(v["intact"], true);
    for f in ["sim_time_ms", "wall_time_ms", "link_rekeys"] {
        assert!(v[f].is_number(), "{f}");
    }
    assert!(v["link_rekeys"].as_u64().unwrap() >= 8);
}
