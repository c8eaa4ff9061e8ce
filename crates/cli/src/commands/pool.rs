//! `spotkeeper pool list|show`: capacity observed now by tag, and the last
//! decisions of the daemon's pool passes (from the state file).

use std::process::ExitCode;

use spotkeeper_engine::desired::pools as all_pools;
use spotkeeper_engine::pools::view::view;

use crate::Failure;
use crate::cli::Args;
use crate::context;
use crate::output;

fn when(at: Option<i64>) -> String {
    at.map_or_else(
        || "never".to_owned(),
        |at| {
            let ago = spotkeeper_engine::store::unix_now() - at;
            format!("{ago}s ago")
        },
    )
}

pub async fn run(args: &Args, only: Option<&str>) -> Result<ExitCode, Failure> {
    let config = context::load_config(args, true)?;
    let path = context::state_path(args, &config)?;
    let (store, _) = context::open_store(&path, &config, Default::default()).await?;
    let (mut pools, _) = all_pools(&config, &store).await?;
    if let Some(name) = only {
        pools.retain(|(p, _)| p.name == name);
        if pools.is_empty() {
            let known: Vec<String> = all_pools(&config, &store)
                .await?
                .0
                .into_iter()
                .map(|(p, _)| p.name)
                .collect();
            return Err(Failure::Usage(anyhow::anyhow!(
                "no pool named {name:?}; there are: {}",
                if known.is_empty() {
                    "none (add a [pool.NAME] section or POST /api/pools)".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    let cloud = context::connect(&config).await?;
    let views = view(&cloud, &store, &config.owner, &pools, 10).await?;
    if args.json {
        if only.is_some() {
            output::print_json(&views[0])?;
        } else {
            output::print_json(&views)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if views.is_empty() {
        eprintln!("No pools: add a [pool.NAME] section to the config or POST /api/pools.");
        return Ok(ExitCode::SUCCESS);
    }
    if only.is_none() {
        let rows: Vec<Vec<String>> = views
            .iter()
            .map(|v| {
                vec![
                    v.name.clone(),
                    v.source.clone(),
                    v.desired.map_or("-".into(), |d| d.to_string()),
                    v.current.to_string(),
                    v.pending.to_string(),
                    format!("{}..{}", v.min_capacity, v.max_capacity),
                    v.instances.to_string(),
                    if v.held.is_some() {
                        "held".into()
                    } else {
                        String::new()
                    },
                    when(v.last_pass_at),
                ]
            })
            .collect();
        output::print_table(
            &[
                "POOL",
                "SOURCE",
                "DESIRED",
                "CURRENT",
                "PENDING",
                "RANGE",
                "INSTANCES",
                "",
                "LAST PASS",
            ],
            &rows,
        );
        return Ok(ExitCode::SUCCESS);
    }
    let v = &views[0];
    println!("pool {} ({})", v.name, v.source);
    println!(
        "  desired {}   current {}   pending {}   range {}..{}   last pass {}",
        v.desired.map_or("-".into(), |d| d.to_string()),
        v.current,
        v.pending,
        v.min_capacity,
        v.max_capacity,
        when(v.last_pass_at)
    );
    if let Some(why) = &v.held {
        println!("  HELD: {why}");
    }
    if !v.by_offering.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = v
            .by_offering
            .iter()
            .map(|(k, units)| {
                let mut cols: Vec<String> = k.split(' ').map(str::to_owned).collect();
                cols.push(units.to_string());
                cols
            })
            .collect();
        output::print_table(&["TYPE", "ZONE", "MARKET", "UNITS"], &rows);
    }
    if !v.reasons.is_empty() {
        println!("\nlast pass:");
        for r in &v.reasons {
            println!("  - {r}");
        }
    }
    if !v.events.is_empty() {
        println!("\nrecent events:");
        for e in &v.events {
            println!("  {}  {:<14} {}", when(Some(e.at)), e.kind, e.message);
        }
    }
    Ok(ExitCode::SUCCESS)
}
