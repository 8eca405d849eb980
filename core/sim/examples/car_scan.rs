//! Runs skyroute's strategy of the moving-car scenario over many seeds and prints the worst
//! figures: a quick way to look for seeds that break the goals.
//! `cargo run --release -p skyroute-sim --example car_scan -- FIRST LAST [SECONDS]`

use std::time::Duration;

use skyroute_proto::Strategy;
use skyroute_sim::car::run_strategy;

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (first, last, secs) =
        (args.first().copied().unwrap_or(1), args.get(1).copied().unwrap_or(10), args.get(2).copied().unwrap_or(300));
    for seed in first..=last {
        let r = run_strategy(seed, Duration::from_secs(secs), Strategy::Fountain, &Default::default());
        let stalled = r.timeline.chunks(10).filter(|c| c.iter().map(|t| t.1).sum::<f64>() == 0.0).count();
        println!(
            "seed {seed}: breaks {} deadline_met {:.4} bulk {:.0} KB/s overhead {:.3} stalled_10s_windows {stalled}",
            r.session_breaks,
            r.deadline_met,
            r.bulk_goodput_bytes_per_s / 1000.0,
            r.overhead
        );
    }
}
