//! One function per subcommand.

use std::process::ExitCode;

use spotkeeper_engine::boxes::{BoxError, Ctx, Timing};

use crate::Failure;
use crate::cli::{Args, Command};
use crate::context;
use crate::output::{self, INSTANCE_HEADER, InstanceJson, Steps};

pub async fn dispatch(args: Args) -> Result<ExitCode, Failure> {
    match &args.command {
        Command::Price {
            box_name,
            instance_types,
            zones,
        } => price(&args, box_name.as_deref(), instance_types, zones).await,
        Command::Up { box_name } => up(&args, box_name).await,
        Command::List => list(&args).await,
        Command::Stop { box_name, no_wait } => stop(&args, box_name, !no_wait).await,
    }
}

async fn price(
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
            let state = context::state_path(args, &config)?;
            let (store, locks) = context::open_store(&state).await?;
            let steps = Steps::new();
            let ctx = Ctx {
                cloud: &cloud,
                store: &store,
                owner: &config.owner,
                lock_dir: &locks,
                progress: &steps,
                timing: Timing::default(),
            };
            spotkeeper_engine::boxes::box_prices(&ctx, spec).await?
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
        if ceiling.is_some() {
            output::print_table(&["TYPE", "ZONE", "USD/HOUR", "UNDER CEILING"], &rows);
        } else {
            output::print_table(&["TYPE", "ZONE", "USD/HOUR"], &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn up(args: &Args, box_name: &str) -> Result<ExitCode, Failure> {
    let config = context::load_config(args, true)?;
    let spec = config
        .box_spec(box_name)
        .map_err(|e| Failure::Usage(e.into()))?
        .clone();
    let cloud = context::connect(&config).await?;
    let state = context::state_path(args, &config)?;
    let (store, locks) = context::open_store(&state).await?;
    let steps = Steps::new();
    let ctx = Ctx {
        cloud: &cloud,
        store: &store,
        owner: &config.owner,
        lock_dir: &locks,
        progress: &steps,
        timing: Timing::default(),
    };
    let outcome = spotkeeper_engine::boxes::up(&ctx, &spec)
        .await
        .map_err(box_failure)?;
    if args.json {
        output::print_json(&InstanceJson::from(&outcome.instance))?;
    } else {
        output::print_table(&INSTANCE_HEADER, &[output::instance_row(&outcome.instance)]);
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(args: &Args) -> Result<ExitCode, Failure> {
    let config = context::load_config(args, false)?;
    let cloud = context::connect(&config).await?;
    let instances = spotkeeper_engine::boxes::list(&cloud, &config.owner).await?;
    if args.json {
        let json: Vec<InstanceJson<'_>> = instances.iter().map(InstanceJson::from).collect();
        output::print_json(&json)?;
    } else if instances.is_empty() {
        eprintln!("No live instances owned by {:?}.", config.owner);
    } else {
        let rows: Vec<Vec<String>> = instances.iter().map(output::instance_row).collect();
        output::print_table(&INSTANCE_HEADER, &rows);
    }
    Ok(ExitCode::SUCCESS)
}

async fn stop(args: &Args, box_name: &str, wait: bool) -> Result<ExitCode, Failure> {
    let config = context::load_config(args, true)?;
    config
        .box_spec(box_name)
        .map_err(|e| Failure::Usage(e.into()))?;
    let cloud = context::connect(&config).await?;
    let state = context::state_path(args, &config)?;
    let (store, locks) = context::open_store(&state).await?;
    let steps = Steps::new();
    let ctx = Ctx {
        cloud: &cloud,
        store: &store,
        owner: &config.owner,
        lock_dir: &locks,
        progress: &steps,
        timing: Timing::default(),
    };
    let outcome = spotkeeper_engine::boxes::stop(&ctx, box_name, wait)
        .await
        .map_err(box_failure)?;
    if args.json {
        output::print_json(&serde_json::json!({
            "box": box_name,
            "terminated": outcome.terminated,
            "cancelled": outcome.cancelled,
        }))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn box_failure(e: BoxError) -> Failure {
    Failure::Failed(e.into())
}
