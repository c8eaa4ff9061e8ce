//! `spotkeeper stop BOX`: mark, cancel, terminate, wait.

use std::process::ExitCode;

use crate::Failure;
use crate::cli::Args;
use crate::output::{self, Steps};

pub async fn run(args: &Args, box_name: &str, wait: bool) -> Result<ExitCode, Failure> {
    let (config, spec, cloud) = super::open_box(args, box_name).await?;
    let (store, locks) = super::open_state(args, &config).await?;
    let steps = Steps::new();
    let outcome = spotkeeper_engine::boxes::stop(
        &super::ctx(&cloud, &store, &config, &locks, &steps),
        &spec,
        wait,
    )
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
