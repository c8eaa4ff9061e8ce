//! `spotkeeper snapshot BOX`: an AMI of the box's running instance, without a reboot.

use std::process::ExitCode;
use std::time::SystemTime;

use spotkeeper_cloud::model::tags;

use crate::Failure;
use crate::cli::Args;
use crate::output::{self, Steps};
use spotkeeper_engine::boxes::Progress;

pub async fn run(args: &Args, box_name: &str) -> Result<ExitCode, Failure> {
    let (config, _spec, cloud) = super::open_box(args, box_name).await?;
    let instance = super::require_live(&cloud, &config, box_name).await?;
    let now = SystemTime::now();
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    let name = format!("spotkeeper-{box_name}-{}", stamp.replace([':', '-'], ""));
    let image_tags = vec![
        (tags::OWNER.to_owned(), config.owner.clone()),
        (tags::BOX.to_owned(), box_name.to_owned()),
        (tags::NAME.to_owned(), name.clone()),
        ("spotkeeper:created".to_owned(), stamp),
    ];
    let steps = Steps::new();
    steps.start(&format!(
        "Creating image {name} of {} (no reboot)",
        instance.id
    ));
    let image = match cloud.snapshot(&instance.id, &name, &image_tags).await {
        Ok(i) => i,
        Err(e) => {
            steps.finish("failed");
            return Err(e.into());
        }
    };
    steps.finish(&format!("{} is available.", image.id));
    if args.json {
        output::print_json(&image)?;
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
    Ok(ExitCode::SUCCESS)
}
