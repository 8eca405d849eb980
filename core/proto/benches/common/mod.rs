//! What the benches share: a criterion set-up with a known output directory, and reading a
//! benchmark's mean back from it to print same-run ratios.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::Criterion;

/// Criterion with short runs, writing under `target/criterion` (or `$CRITERION_HOME`).
pub fn setup() -> (PathBuf, Criterion) {
    let root = std::env::var_os("CRITERION_HOME").map(PathBuf::from).unwrap_or_else(|| {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/criterion");
        std::env::set_var("CRITERION_HOME", &p);
        p
    });
    let c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    (root, c)
}

/// Mean time in ns of `group/name` from this run's estimates.
pub fn mean_ns(root: &Path, group: &str, name: &str) -> Option<f64> {
    let text = std::fs::read_to_string(root.join(group).join(name).join("new/estimates.json")).ok()?;
    let key = "\"mean\":{\"confidence_interval\":";
    let at = text.find(key)?;
    let rest = &text[at..];
    let pe = rest.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    rest[pe..].split([',', '}']).next()?.parse().ok()
}
