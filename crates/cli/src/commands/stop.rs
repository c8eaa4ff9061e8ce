//! `spotkeeper stop BOX`: mark, cancel, terminate, wait.

use std::process::ExitCode;

use spotkeeper_cloud::prelude::*;
use spotkeeper_engine::boxes::Progress as _;
use spotkeeper_engine::failover;

use crate::Failure;
use crate::cli::Args;
use crate::output::{self, Steps};

pub async fn run(args: &Args, box_name: &str, wait: bool) -> Result<ExitCode, Failure> {
    let (config, spec, cloud) = super::open_box(args, box_name).await?;
    let (store, locks) = super::open_state(args, &config).await?;
    let steps = Steps::new();
    let ctx = super::ctx(&cloud, &store, &config, &locks, &steps);
    // A box that failed over to another region: taken down there, its data
    // brought home first (its volume's on_stop then applies at home).
    if !spec.other_regions().is_empty() && failover::blocked(&spec).is_none() {
        let others = super::other_regions(&config, &spec).await?;
        let handles: Vec<(String, &dyn Cloud)> = others
            .iter()
            .map(|(r, c)| (r.clone(), c as &dyn Cloud))
            .collect();
        if let Some(what) = failover::stop_away(&ctx, &handles, &spec)
            .await
            .map_err(super::box_failure)?
        {
            steps.note(&what);
        }
    }
    let outcome = spotkeeper_engine::boxes::stop(&ctx, &spec, wait)
        .await
        .map_err(super::box_failure)?;
    if args.json {
        output::print_json(&serde_json::json!({
            "box": box_name,
            "terminated": outcome.terminated,
            "cancelled": outcome.cancelled,
        }))?;
    }
    Ok(ExitCode::SUCCESS)
}
