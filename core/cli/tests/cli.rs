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

/// The asymmetric scenario (16 MiB, a few seconds): intact both runs, goodput over the
/// one-way wire at least 0.8 of its capacity.
#[test]
fn sim_asymmetric_json_and_goal() {
    let out = skyroute(&["sim", "asymmetric", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["scenario"], "asymmetric");
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for r in runs {
        assert_eq!(r["intact"], true, "{r}");
        assert!(r["goodput_ratio"].as_f64().unwrap() >= 0.8, "{r}");
        assert!(r["return_bytes_per_byte"].as_f64().unwrap() > 0.0, "acks went the way back: {r}");
    }
}

/// The scale model at 1k, 10k and 100k nodes: virtual routes keep the largest table smaller,
/// and it grows about like log(nodes), not like nodes.
#[test]
fn sim_scale_json() {
    let out = skyroute(&["sim", "scale", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for r in rows {
        assert!(r["max_table_with"].as_u64() < r["max_table_without"].as_u64(), "{r}");
        assert!(r["max_backbone_with"].as_u64() < r["max_backbone_without"].as_u64(), "{r}");
        assert!(r["diameter"].as_u64().unwrap() >= 5);
    }
    assert!(rows[2]["nodes"].as_u64().unwrap() >= 100_000);
    let growth = v["growth_with"].as_f64().unwrap();
    assert!(growth < 2.0 * v["growth_log_n"].as_f64().unwrap(), "{v}");
    assert!(skyroute(&["sim", "scale", "--nodes", "3"]).status.code() != Some(0));
}

/// The moving-car scenario at reduced length (docs/measurements.md has the 300 s runs): the
/// JSON names the issue fixes, and skyroute meets its goals against the baselines.
#[test]
fn sim_moving_car_json_and_goals() {
    let dir = tmpdir("car");
    let png = dir.join("car.png");
    let out =
        skyroute(&["sim", "moving-car", "--seed", "3", "--duration", "25", "--json", "--plot", png.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8_lossy(&out.stdout).lines().find(|l| l.starts_with('{')).unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["scenario"], "moving-car");
    assert_eq!(v["seed"], 3);
    assert_eq!(v["duration_s"], 25.0);
    assert!(v["lte_trace"].is_null(), "no trace: the scenario's LTE model");
    for f in ["deadline_met", "bulk_bytes_per_s"] {
        assert!(v["oracle"][f].is_number(), "oracle.{f}");
    }
    for s in ["skyroute", "single_route", "min_rtt", "duplicate_all", "mptcp_like"] {
        for f in [
            "session_breaks",
            "deadline_met",
            "bulk_goodput_bytes_per_s",
            "overhead",
            "route_changes",
            "deadline_met_of_oracle",
            "bulk_of_oracle",
            "stall_s",
        ] {
            assert!(v["strategies"][s][f].is_number(), "{s}.{f}");
        }
        // A number, or null where more than 1% of frames never arrived.
        let p99 = &v["strategies"][s]["p99_frame_latency_ms"];
        assert!(p99.is_number() || p99.is_null(), "{s}: {p99}");
        assert!(v["strategies"][s]["bulk_of_oracle"].as_f64().unwrap() <= 1.0, "{s}: {line}");
    }
    assert!(v["strategies"]["skyroute"]["p99_frame_latency_ms"].as_f64().is_some_and(|p| p <= 150.0), "{line}");
    let s = |name: &str, f: &str| v["strategies"][name][f].as_f64().unwrap();
    assert_eq!(s("skyroute", "session_breaks"), 0.0);
    assert!(s("skyroute", "deadline_met") >= 0.99, "{line}");
    // The 1/2-of-duplicate-all overhead goal is a 300 s figure (docs/measurements.md): in 25 s the car meets
    // fewer overlapping WiFi nodes, so duplicate-all has fewer routes to copy onto.
    assert!(s("skyroute", "overhead") < 0.6 * s("duplicate_all", "overhead"), "{line}");
    assert!(s("skyroute", "overhead") < 1.25, "{line}");
    assert!(s("skyroute", "bulk_goodput_bytes_per_s") >= s("min_rtt", "bulk_goodput_bytes_per_s"), "{line}");
    let png = std::fs::read(&png).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // Bad input: one clear error line, non-zero exit.
    let out = skyroute(&["sim", "moving-car", "--duration", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--duration"));
}

/// The car on a recorded LTE trace (an excerpt kept in the tree): the JSON names the trace,
/// the SVG plot reads without the terminal, and a bad trace is refused naming its line.
#[test]
fn sim_moving_car_on_a_trace_with_an_svg_plot() {
    let dir = tmpdir("car-trace");
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sim/tests/data");
    let (down, up) = (data.join("Verizon-LTE-short-60s.down"), data.join("Verizon-LTE-short-60s.up"));
    let svg = dir.join("car.svg");
    let out = skyroute(&[
        "sim",
        "moving-car",
        "--seed",
        "2",
        "--duration",
        "12",
        "--json",
        "--lte-trace",
        down.to_str().unwrap(),
        "--lte-uplink-trace",
        up.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["lte_trace"], "Verizon-LTE-short-60s.down");
    assert_eq!(v["lte_uplink_trace"], "Verizon-LTE-short-60s.up");
    assert!(v["oracle"]["bulk_bytes_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["strategies"]["skyroute"]["session_breaks"], 0);
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
    for text in [
        "skyroute moving car: seed 2, 12 s simulated",
        "Verizon-LTE-short-60s.down",
        "time (s)",
        "frames within deadline",
        "bulk goodput (Mbit/s)",
        "oracle",
        "LTE out",
        "no WiFi in range",
    ] {
        assert!(svg.contains(&format!(">{text}")) || svg.contains(text), "{text} missing from the SVG");
    }
    for name in ["skyroute", "single_route", "min_rtt", "duplicate_all", "mptcp_like"] {
        assert!(svg.contains(&format!(">{name}</text>")), "{name} missing from the SVG legend");
    }
    assert!(svg.contains("stroke-dasharray"), "the oracle is dashed");
    // A trace with a bad line: one error naming the file's line, non-zero exit.
    let bad = dir.join("bad.down");
    std::fs::write(&bad, "1\n2\nthree\n").unwrap();
    let out = skyroute(&["sim", "moving-car", "--duration", "2", "--lte-trace", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3"), "{err}");
    let out = skyroute(&["sim", "moving-car", "--lte-uplink-trace", bad.to_str().unwrap()]);
    assert!(!out.status.success(), "an uplink trace needs a downlink one");
}

#[test]
fn sim_eight_hop_loss_sweep_prints_one_object_per_loss_rate() {
    let out = skyroute(&["sim", "eight-hop-loss", "--sweep", "--bytes", "32768", "--json"]);
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON array");
    let runs = runs.as_array().expect("an array");
    assert_eq!(runs.len(), 10);
    for (i, r) in runs.iter().enumerate() {
        assert_eq!(r["loss"].as_f64(), Some(i as f64 / 10.0), "{r}");
        for field in ["intact", "goodput", "goodput_of_limit", "route_setup_ms", "transfer_ms"] {
            assert!(!r[field].is_null(), "{field} in {r}");
        }
    }
    // No cliff up to 70% (nothing arrived at 70% before issue 21's first steps).
    assert!(runs[..8].iter().all(|r| r["intact"] == true), "{runs:?}");
    let all_intact = runs.iter().all(|r| r["intact"] == true);
    assert_eq!(out.status.success(), all_intact, "the exit status says whether every run was intact");
}
