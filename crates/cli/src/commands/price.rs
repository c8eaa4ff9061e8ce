//! `spotkeeper price`: current spot prices, cheapest first.

use std::process::ExitCode;

use crate::Failure;
use crate::cli::Args;
use crate::context;
use crate::output::{self, Steps};

pub async fn run(
    args: &Args,
    box_name: Option<&str>,
    types: &[String],
    zones: &[String],
) -> Result<ExitCode, Failure> {
    if box_name.is_none() && types.is_empty() {
        return Err(Failure::Usage(anyhow::anyhow!(
            "name a BOX or at least one --type TYPE"
        )));
    }
    let config = context::load_config(args, box_name.is_some())?;
    let spec = match box_name {
        Some(b) => Some(
            config
                .box_spec(b)
                .map_err(|e| Failure::Usage(e.into()))?
                .clone(),
        ),
        None => None,
    };
    let cloud = context::connect(&config).await?;
    let mut prices = match &spec {
        Some(spec) if zones.is_empty() => {
            let (store, locks) = super::open_state(args, &config).await?;
            let steps = Steps::new();
            spotkeeper_engine::boxes::box_prices(
                &super::ctx(&cloud, &store, &config, &locks, &steps),
                spec,
            )
            .await?
        }
        Some(spec) => spotkeeper_engine::boxes::prices(&cloud, &spec.instance_types, zones).await?,
        None => spotkeeper_engine::boxes::prices(&cloud, types, zones).await?,
    };
    if !zones.is_empty() {
        prices.retain(|p| zones.contains(&p.zone));
    }
    if let Some(spec) = &spec {
        return ranked(args, &config, spec, prices, &cloud).await;
    }
    if args.json {
        output::print_json(&prices)?;
    } else if prices.is_empty() {
        eprintln!("AWS reports no spot price for those instance types and zones.");
    } else {
        let ceiling = spec.as_ref().map(|s| s.max_price);
        let rows: Vec<Vec<String>> = prices
            .iter()
            .map(|p| {
                let mut row = vec![
                    p.instance_type.clone(),
                    p.zone.clone(),
                    format!("{}", p.price),
                ];
                if let Some(c) = ceiling {
                    row.push(if p.price <= c {
                        "yes".into()
                    } else {
                        "no".into()
                    });
                }
                row
            })
            .collect();
        if let Some(spec) = &spec {
            output::print_table(&["TYPE", "ZONE", "USD/HOUR", "UNDER CEILING"], &rows);
            eprintln!(
                "Ceiling {} USD/hour, {}",
                spec.max_price,
                match spec.price_cap {
                    spotkeeper_engine::config::PriceCap::Spotkeeper =>
                        "held by spotkeeper: checked at launch, and the daemon moves a box whose price rises above it",
                    spotkeeper_engine::config::PriceCap::Aws =>
                        "sent to AWS as the spot MaxPrice (price_cap = \"aws\"): AWS interrupts the box above it",
                }
            );
        } else {
            output::print_table(&["TYPE", "ZONE", "USD/HOUR"], &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A box's offerings with what its strategy weighs: price, placement score,
/// this owner's interruption record, and the rank (offerings under the
/// ceiling only; the first is what `up` would launch).
async fn ranked(
    args: &Args,
    config: &spotkeeper_engine::config::Config,
    spec: &spotkeeper_engine::config::BoxSpec,
    prices: Vec<spotkeeper_cloud::SpotPrice>,
    cloud: &spotkeeper_cloud::AwsCloud,
) -> Result<ExitCode, Failure> {
    use spotkeeper_engine::rank::{Offer, rank};
    let (store, _) = super::open_state(args, config).await?;
    // Shown whatever the strategy: what it would weigh.
    let weighed =
        spotkeeper_engine::boxes::Weighed::of(&store, cloud, &config.owner, spec, true).await?;
    if let Some(said) = &weighed.refused {
        eprintln!("{said}");
    }
    let offer = |p: &spotkeeper_cloud::SpotPrice| weighed.offer(p);
    let under: Vec<Offer> = prices
        .iter()
        .filter(|p| p.price <= spec.max_price)
        .map(offer)
        .collect();
    let mut rows: Vec<serde_json::Value> = rank(under, spec.strategy, &spec.instance_types)
        .into_iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r).unwrap_or_default();
            v["under_ceiling"] = true.into();
            v
        })
        .collect();
    for p in prices.iter().filter(|p| p.price > spec.max_price) {
        let mut v = serde_json::to_value(offer(p)).unwrap_or_default();
        v["under_ceiling"] = false.into();
        v["rank"] = serde_json::Value::Null;
        rows.push(v);
    }
    let regional = !spec.other_regions().is_empty();
    if regional {
        for r in &mut rows {
            r["region"] = spotkeeper_cloud::Pricing::region(cloud).into();
        }
        rows.extend(elsewhere(config, spec).await?);
    }
    if args.json {
        output::print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        eprintln!("AWS reports no spot price for those instance types and zones.");
        return Ok(ExitCode::SUCCESS);
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let rank = match r["failover_rank"].as_u64() {
                Some(n) => format!("f{n}"),
                None => text(&r["rank"]),
            };
            let mut row = vec![
                rank,
                text(&r["instance_type"]),
                text(&r["zone"]),
                text(&r["price"]),
                if r["under_ceiling"] == true {
                    "yes"
                } else {
                    "no"
                }
                .to_owned(),
                text(&r["score"]),
                match (r["interruptions"].as_u64(), r["hours"].as_f64()) {
                    (Some(0), Some(0.0)) => "-".to_owned(),
                    (n, h) => format!("{} in {:.0} h", n.unwrap_or(0), h.unwrap_or(0.0)),
                },
                text(&r["reason"]),
            ];
            if regional {
                row.insert(1, text(&r["region"]));
            }
            row
        })
        .collect();
    let mut head = vec![
        "RANK",
        "TYPE",
        "ZONE",
        "USD/HOUR",
        "UNDER CEILING",
        "SCORE",
        "INTERRUPTED",
        "WHY",
    ];
    if regional {
        head.insert(1, "REGION");
    }
    output::print_table(&head, &table);
    eprintln!(
        "Ceiling {} USD/hour ({}); strategy {}: rank 1 is what `up` launches, f1 where a failover would go (price plus region_surcharge); score: AWS's spot placement score of the zone (1-10).",
        spec.max_price,
        match spec.price_cap {
            spotkeeper_engine::config::PriceCap::Spotkeeper => "held by spotkeeper",
            spotkeeper_engine::config::PriceCap::Aws => "sent to AWS as MaxPrice",
        },
        spec.strategy.as_str()
    );
    Ok(ExitCode::SUCCESS)
}

/// The box's types in each of its other regions (every zone there: the
/// box's `zones` name the home's), ranked among themselves by price plus the
/// region's `region_surcharge`: `failover_rank` 1 is the offering a failover
/// would go to now (shown as `f1`).
async fn elsewhere(
    config: &spotkeeper_engine::config::Config,
    spec: &spotkeeper_engine::config::BoxSpec,
) -> Result<Vec<serde_json::Value>, Failure> {
    let mut rows = Vec::new();
    for region in spec.other_regions() {
        let cloud = context::connect_in(config, region).await?;
        let surcharge = spotkeeper_engine::failover::surcharge(spec, region);
        for p in spotkeeper_engine::boxes::prices(&cloud, &spec.instance_types, &[]).await? {
            rows.push(serde_json::json!({
                "region": region,
                "instance_type": p.instance_type,
                "zone": p.zone,
                "price": p.price,
                "surcharge": surcharge,
                "adjusted_price": p.price + surcharge,
                "under_ceiling": p.price <= spec.max_price,
                "rank": null,
                "failover_rank": null,
            }));
        }
    }
    let adjusted = |v: &serde_json::Value| v["adjusted_price"].as_f64().unwrap_or(f64::MAX);
    rows.sort_by(|a, b| adjusted(a).total_cmp(&adjusted(b)));
    let mut n = 0;
    for r in &mut rows {
        if r["under_ceiling"] == true {
            n += 1;
            r["failover_rank"] = n.into();
            r["reason"] = format!(
                "failover choice {n}: {} + {} surcharge",
                r["price"], r["surcharge"]
            )
            .into();
        } else {
            r["reason"] = "over the ceiling".into();
        }
    }
    Ok(rows)
}
