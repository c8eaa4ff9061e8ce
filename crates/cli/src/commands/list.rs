//! `spotkeeper list`: every live instance this owner has, in the `[aws]`
//! region and in every other region a box lists (where a box that failed
//! over runs), each with its region.

use std::process::ExitCode;

use spotkeeper_cloud::prelude::*;

use crate::Failure;
use crate::cli::Args;
use crate::context;
use crate::output::{self, INSTANCE_HEADER, InstanceJson};

pub async fn run(args: &Args) -> Result<ExitCode, Failure> {
    let config = context::load_config(args, false)?;
    let cloud = context::connect(&config).await?;
    let mut instances = spotkeeper_engine::boxes::list(&cloud, &config.owner).await?;
    for region in context::other_regions(&config, Some(cloud.region()), |_| true) {
        let there = context::connect_in(&config, &region).await?;
        instances.extend(spotkeeper_engine::boxes::list(&there, &config.owner).await?);
    }
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
