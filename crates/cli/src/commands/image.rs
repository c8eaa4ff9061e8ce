//! `spotkeeper image IMAGE` (resolve an alias) and `spotkeeper image delete AMI`.

use spotkeeper_cloud::prelude::*;
use std::process::ExitCode;

use spotkeeper_cloud::{ImageId, ImageRef};

use crate::Failure;
use crate::cli::Args;
use crate::context;
use crate::output;

pub async fn resolve(args: &Args, alias: &str) -> Result<ExitCode, Failure> {
    let image = ImageRef::parse(alias).map_err(|m| Failure::Usage(anyhow::anyhow!(m)))?;
    let config = context::load_config(args, false)?;
    let cloud = context::connect(&config).await?;
    let id = cloud.resolve_image(&image).await?;
    if args.json {
        output::print_json(
            &serde_json::json!({ "image": alias, "image_id": id, "region": cloud.region() }),
        )?;
    } else {
        println!("{id}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(args: &Args, image_id: &str) -> Result<ExitCode, Failure> {
    let ImageRef::Id(id) =
        ImageRef::parse(image_id).map_err(|m| Failure::Usage(anyhow::anyhow!(m)))?
    else {
        return Err(Failure::Usage(anyhow::anyhow!(
            "{image_id:?} is an alias; `image delete` takes an AMI id (ami-…)"
        )));
    };
    let config = context::load_config(args, false)?;
    let cloud = context::connect(&config).await?;
    let deleted = cloud.delete_image(&ImageId::new(id.as_str())).await?;
    if args.json {
        output::print_json(&serde_json::json!({ "image_id": id, "deleted_snapshots": deleted }))?;
    } else {
        let snaps: Vec<String> = deleted.iter().map(ToString::to_string).collect();
        eprintln!(
            "Deregistered {id}{}",
            if snaps.is_empty() {
                String::new()
            } else {
                format!(" and deleted {}", snaps.join(", "))
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
