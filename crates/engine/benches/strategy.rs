//! Does choosing by risk pay? Each strategy over the seeded trace (30 days,
//! four offerings of different interruption rates) and the recorded-style
//! trace in `fixtures/traces/recorded.csv`, through the launcher's ranking
//! with the history the box builds as it goes (`spotkeeper_engine::simulate`):
//! spot cost, interruptions, downtime and cost per useful hour.
//! `cargo bench -p spotkeeper-engine --bench strategy`, or `scripts/bench`.

use spotkeeper_engine::rank::Strategy;
use spotkeeper_engine::simulate::{self, Trace};

fn table(name: &str, trace: &Trace) {
    println!(
        "{name}: {} offerings, {} hours, {} min down per interruption",
        trace.series.len(),
        trace.hours(),
        simulate::RECOVERY_MINUTES
    );
    println!(
        "  {:<15} {:>10} {:>14} {:>14} {:>20}",
        "strategy", "spot USD", "interruptions", "downtime min", "USD per useful hour"
    );
    let cheapest = simulate::run(trace, Strategy::Cheapest, 1.0);
    for strategy in [
        Strategy::Cheapest,
        Strategy::PriceCapacity,
        Strategy::Capacity,
    ] {
        let o = simulate::run(trace, strategy, 1.0);
        println!(
            "  {:<15} {:>10.3} {:>14} {:>14.0} {:>20.5}   ({:+.1} % cost, {:+} interruptions vs cheapest)",
            strategy.as_str(),
            o.cost,
            o.interruptions,
            o.downtime_minutes,
            o.cost_per_useful_hour(),
            100.0 * (o.cost / cheapest.cost - 1.0),
            o.interruptions as i64 - cheapest.interruptions as i64,
        );
    }
}

fn main() {
    table(
        "seeded trace (seed 7, 90 days)",
        &simulate::seeded(7, 90 * 24),
    );
    let recorded = simulate::parse_csv(include_str!("../fixtures/traces/recorded.csv"))
        .expect("the recorded trace parses");
    table("recorded-style trace", &recorded);
}
