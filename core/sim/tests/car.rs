//! The moving car's oracle: what an all-knowing sender could have done in the same seeded
//! world. No strategy may beat it, on any seed, with the scenario's LTE model or a trace.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use skyroute_proto::Strategy;
use skyroute_sim::car::{oracle, run_strategy, Drive};
use skyroute_sim::trace::Trace;

fn test_drive() -> Drive {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let load = |f: &str| Arc::new(Trace::load(&data.join(f)).expect("test trace"));
    Drive {
        lte_trace: Some(load("Verizon-LTE-short-60s.down")),
        lte_uplink_trace: Some(load("Verizon-LTE-short-60s.up")),
        queue_packets: None,
    }
}

fn cases() -> u32 {
    std::env::var("SKYROUTE_ORACLE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Every strategy's frames in time and bulk bytes stay at or below the oracle's.
    #[test]
    fn no_strategy_beats_the_oracle(seed in 1u64..100_000, traced in any::<bool>()) {
        let duration = Duration::from_secs(6);
        let drive = if traced { test_drive() } else { Drive::default() };
        let o = oracle(seed, duration, &drive);
        prop_assert!(o.deadline_met > 0.0 && o.deadline_met <= 1.0, "{o:?}");
        for s in [Strategy::Fountain, Strategy::SingleRoute, Strategy::MinRtt, Strategy::DuplicateAll, Strategy::MptcpLike] {
            let r = run_strategy(seed, duration, s, &drive);
            prop_assert!(r.frames_in_time <= o.frames_possible, "{s:?}: {} frames in time, oracle {}", r.frames_in_time, o.frames_possible);
            prop_assert!((r.bulk_bytes as f64) <= o.bulk_bytes, "{s:?}: {} bulk bytes, oracle {}", r.bulk_bytes, o.bulk_bytes);
            prop_assert!(r.bulk_of_oracle <= 1.0 && r.deadline_met_of_oracle <= 1.0 + 1e-9, "{s:?}: {r:?}");
        }
    }
}

/// The oracle's frames: with WiFi in range and LTE up nearly always, nearly every frame slot
/// could make its deadline; a trace's long outages where no WiFi is in range cost slots.
#[test]
fn the_oracle_counts_every_frame_slot_and_the_links_capacity() {
    let duration = Duration::from_secs(20);
    let o = oracle(1, duration, &Drive::default());
    // One slot every 20 ms from 0.5 s.
    assert_eq!(o.frame_slots, 975);
    assert!(o.deadline_met > 0.95, "{o:?}");
    // WiFi (1 MB/s per node, 1-2 in range) plus LTE (500 KB/s): between 0.5 and 3 MB/s.
    assert!((500_000.0..3_000_000.0).contains(&o.bulk_bytes_per_s), "{o:?}");
    let traced = oracle(1, duration, &test_drive());
    assert_ne!(traced.bulk_bytes, o.bulk_bytes, "the trace sets the LTE capacity");
}
