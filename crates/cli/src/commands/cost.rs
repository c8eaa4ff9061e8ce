//! `spotkeeper cost [--since 30d]`: what ran, what it cost, what on-demand
//! would have cost, and how often each offering was interrupted.

use std::process::ExitCode;

use spotkeeper_engine::cost::{self, Line};

use crate::Failure;
use crate::cli::Args;
use crate::context;
use crate::output;

fn money(v: Option<f64>) -> String {
    v.map_or("unknown".to_owned(), |v| format!("${v:.4}"))
}

fn row(l: &Line) -> Vec<String> {
    vec![
        l.subject.clone(),
        format!("{:.2}", l.spot_hours),
        format!("{:.2}", l.on_demand_hours),
        money(l.cost),
        money(l.on_demand_cost),
        money(l.savings),
        l.savings_percent
            .map_or("unknown".to_owned(), |p| format!("{p:.1}%")),
        if l.interruptions == 0 {
            "-".to_owned()
        } else {
            format!("{} min / {}", l.down_minutes(), l.interruptions)
        },
    ]
}

/// The money table's header, its first column named `first`.
fn header(first: &str) -> [&str; 8] {
    [
        first,
        "SPOT H",
        "ON-DEMAND H",
        "COST",
        "ON-DEMAND COST",
        "SAVED",
        "SAVED %",
        "DOWN / INTERRUPTIONS",
    ]
}

pub async fn run(args: &Args, since: &str) -> Result<ExitCode, Failure> {
    let window = humantime::parse_duration(since).map_err(|e| {
        Failure::Usage(anyhow::anyhow!(
            "--since {since:?} is not a duration like 30d or 12h: {e}"
        ))
    })?;
    let config = context::load_config(args, false)?;
    let cloud = context::connect(&config).await?;
    let (store, _) = super::open_state(args, &config).await?;
    let until = spotkeeper_engine::store::unix_now();
    let from = until.saturating_sub(i64::try_from(window.as_secs()).unwrap_or(i64::MAX));
    let report = cost::report(&cloud, &store, &config, from, until).await?;
    if args.json {
        output::print_json(&serde_json::to_value(&report)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows: Vec<Vec<String>> = report.lines.iter().map(row).collect();
    rows.push(row(&report.total));
    output::print_table(&header("BOX/POOL"), &rows);
    // Availability beside savings, in words, for the boxes interrupted.
    for l in report.lines.iter().filter(|l| l.interruptions > 0) {
        println!("{}: {}", l.subject, l.summary);
    }
    // Spend per region, when the instances ran in more than one (a box
    // that failed over).
    if report.regions.len() > 1 {
        println!();
        let rows: Vec<Vec<String>> = report.regions.iter().map(row).collect();
        output::print_table(&header("REGION"), &rows);
    }
    if !report.offerings.is_empty() {
        println!();
        output::print_table(
            &["TYPE", "ZONE", "SPOT H", "INTERRUPTIONS", "H BETWEEN"],
            &report
                .offerings
                .iter()
                .map(|o| {
                    vec![
                        o.instance_type.clone(),
                        o.zone.clone(),
                        format!("{:.2}", o.spot_hours),
                        o.interruptions.to_string(),
                        o.hours_between
                            .map_or("-".to_owned(), |h| format!("{h:.1}")),
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }
    let unknown: Vec<&str> = report
        .on_demand_prices
        .iter()
        .filter(|(_, p)| p.is_none())
        .map(|(t, _)| t.as_str())
        .collect();
    if !unknown.is_empty() {
        eprintln!(
            "On-demand price unknown for {} (the AWS Price List did not answer); set [cost] on_demand = {{ \"TYPE\" = USD_PER_HOUR }} to give it",
            unknown.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
