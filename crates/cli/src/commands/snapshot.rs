//! `spotkeeper snapshot BOX` / `spotkeeper image create BOX`: an AMI of the
//! box's running instance without a reboot, then retention (`images.keep`).

use std::process::ExitCode;
use std::time::SystemTime;

use spotkeeper_engine::boxes::Progress;

use crate::Failure;
use crate::cli::Args;
use crate::output::{self, Steps};

pub async fn run(args: &Args, box_name: &str) -> Result<ExitCode, Failure> {
    let (config, spec, cloud) = super::open_box(args, box_name).await?;
    let instance = super::require_live(&cloud, &config, box_name).await?;
    let steps = Steps::new();
    steps.start(&format!("Creating an image of {} (no reboot)", instance.id));
    let (image, pruned) = match spotkeeper_engine::images::create(
        &cloud,
        &config.owner,
        &spec,
        &instance,
        SystemTime::now(),
    )
    .await
    {
        Ok(done) => done,
        Err(e) => {
            steps.finish("failed");
            return Err(e.into());
        }
    };
    steps.finish(&format!("{} is available.", image.id));
    for old in &pruned {
        steps.note(&format!(
            "Deregistered older image {old} and its snapshots (images.keep)"
        ));
    }
    let home = spotkeeper_cloud::Pricing::region(&cloud).to_owned();
    let copied = copy_elsewhere(&config, &spec, &home, &image, &steps).await?;
    if args.json {
        output::print_json(&serde_json::json!({ "image": image, "pruned": pruned }))?;
    } else {
        let snaps: Vec<String> = image.snapshot_ids.iter().map(ToString::to_string).collect();
        output::print_table(
            &["IMAGE", "NAME", "STATE", "SNAPSHOTS"],
            &[vec![
                image.id.to_string(),
                image.name.clone().unwrap_or_default(),
                image.state.clone(),
                snaps.join(","),
            ]],
        );
    }
    Ok(if copied {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Copies the image to the box's other regions (each pruned to
/// `images.keep`); false when a region's copy failed (said).
async fn copy_elsewhere(
    config: &spotkeeper_engine::config::Config,
    spec: &spotkeeper_engine::config::BoxSpec,
    home: &str,
    image: &spotkeeper_cloud::Image,
    steps: &Steps,
) -> Result<bool, Failure> {
    if spec.other_regions().is_empty() {
        return Ok(true);
    }
    let mut handles = Vec::new();
    for region in spec.other_regions() {
        handles.push((
            region.clone(),
            crate::context::connect_in(config, region).await?,
        ));
    }
    let others: Vec<(String, &dyn spotkeeper_cloud::Cloud)> = handles
        .iter()
        .map(|(r, c)| (r.clone(), c as &dyn spotkeeper_cloud::Cloud))
        .collect();
    let (copies, failed) = spotkeeper_engine::images::copy_to_regions(
        &others,
        home,
        &config.owner,
        spec,
        image,
        SystemTime::now(),
    )
    .await;
    for (region, id) in &copies {
        steps.note(&format!("Copying it to {region}: {id}"));
    }
    for (region, why) in &failed {
        steps.note(&format!("Copying it to {region} failed: {why}"));
    }
    Ok(failed.is_empty())
}
