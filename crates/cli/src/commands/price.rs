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
