//! `spotkeeper volume add BOX --size N [--type T]`.

use std::process::ExitCode;

use crate::Failure;
use crate::cli::Args;
use crate::output;

pub async fn add(args: &Args, box_name: &str, size: i32, kind: &str) -> Result<ExitCode, Failure> {
    let (config, _spec, cloud) = super::open_box(args, box_name).await?;
    let instance = super::require_live(&cloud, &config, box_name).await?;
    let mut handle = cloud.get_instance(&instance.id).await?;
    let volume = handle.add_volume(size, kind).await?;
    if args.json {
        output::print_json(&volume)?;
    } else {
        let device = volume
            .attachments
            .first()
            .map(|a| a.1.clone())
            .unwrap_or_default();
        output::print_table(
            &["VOLUME", "DEVICE", "SIZE", "TYPE", "ZONE", "INSTANCE"],
            &[vec![
                volume.id.to_string(),
                device,
                format!("{}G", volume.size_gb),
                volume.kind.clone(),
                volume.zone.clone(),
                instance.id.to_string(),
            ]],
        );
    }
    Ok(ExitCode::SUCCESS)
}
