//! `spotkeeper up BOX`: find the box or launch it, wait until it answers.

use std::process::ExitCode;

use crate::Failure;
use crate::cli::Args;
use crate::output::{self, INSTANCE_HEADER, InstanceJson, Steps};

pub async fn run(args: &Args, box_name: &str) -> Result<ExitCode, Failure> {
    let (config, spec, cloud) = super::open_box(args, box_name).await?;
    let (store, locks) = super::open_state(args, &config).await?;
    let steps = Steps::new();
    let outcome =
        spotkeeper_engine::boxes::up(&super::ctx(&cloud, &store, &config, &locks, &steps), &spec)
            .await
            .map_err(super::box_failure)?;
    if args.json {
        output::print_json(&InstanceJson::from(&outcome.instance))?;
    } else {
        output::print_table(&INSTANCE_HEADER, &[output::instance_row(&outcome.instance)]);
    }
    Ok(ExitCode::SUCCESS)
}
