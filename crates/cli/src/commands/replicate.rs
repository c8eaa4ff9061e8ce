//! `spotkeeper replicate BOX [--status]`: a replica of the box's data volume
//! in each of its other regions now (see `spotkeeper_engine::replicate`),
//! then each region's newest replica and what a failover there would lose.
//! Exit 1 when a region's copy failed.

use std::process::ExitCode;

use spotkeeper_cloud::AwsCloud;
use spotkeeper_cloud::prelude::*;
use spotkeeper_engine::boxes::Progress;
use spotkeeper_engine::config::{BoxSpec, Config};
use spotkeeper_engine::event_kind::EventKind;
use spotkeeper_engine::replicate::{self, ReplicateError};
use spotkeeper_engine::store::Store;

use crate::Failure;
use crate::cli::Args;
use crate::output::{self, Steps};

pub async fn run(args: &Args, box_name: &str, status_only: bool) -> Result<ExitCode, Failure> {
    let (config, spec, cloud) = super::open_box(args, box_name).await?;
    let Some(vs) = spec
        .data_volume
        .as_ref()
        .filter(|_| !spec.other_regions().is_empty())
    else {
        return Err(Failure::Usage(
            ReplicateError::Nothing(box_name.to_owned()).into(),
        ));
    };
    let others = super::other_regions(&config, &spec).await?;
    let handles: Vec<(String, &dyn Cloud)> = others
        .iter()
        .map(|(r, c)| (r.clone(), c as &dyn Cloud))
        .collect();
    let now = spotkeeper_engine::store::unix_now();
    let failed = if status_only {
        false
    } else {
        let (store, _) = super::open_state(args, &config).await?;
        round(&cloud, &handles, &store, &config, &spec, now).await?
    };
    let mut rows = Vec::new();
    let mut json = Vec::new();
    for (region, c) in &handles {
        let all = replicate::replicas(*c, &config.owner, &vs.name).await?;
        let point = replicate::recovery_point(&all, region, now);
        let newest = all.first();
        json.push(serde_json::json!({
            "region": region,
            "newest": newest.map(|r| r.snapshot.to_string()),
            "completed": newest.is_some_and(|r| r.completed),
            "replicas": all.len(),
            "recovery_point_seconds": point,
            "says": replicate::describe_recovery_point(region, point),
        }));
        rows.push(vec![
            region.clone(),
            newest.map_or_else(|| "-".into(), |r| r.snapshot.to_string()),
            newest
                .map_or("-", |r| if r.completed { "completed" } else { "copying" })
                .to_owned(),
            all.len().to_string(),
            replicate::describe_recovery_point(region, point),
        ]);
    }
    if args.json {
        output::print_json(&serde_json::json!({ "box": box_name, "regions": json }))?;
    } else {
        output::print_table(
            &["REGION", "NEWEST", "STATE", "REPLICAS", "RECOVERY POINT"],
            &rows,
        );
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// One round, said on stderr and recorded as events; true when a region's
/// copy failed.
async fn round(
    cloud: &AwsCloud,
    handles: &[(String, &dyn Cloud)],
    store: &Store,
    config: &Config,
    spec: &BoxSpec,
    now: i64,
) -> Result<bool, Failure> {
    let name = spec.name.as_str();
    let volume = spec.data_volume.as_ref().map_or("", |v| v.name.as_str());
    let steps = Steps::new();
    steps.start(&format!(
        "Snapshotting {volume} in {} and copying it to {}",
        cloud.region(),
        spec.other_regions().join(", ")
    ));
    let round = match replicate::replicate(cloud, handles, &config.owner, spec, now).await {
        Ok(r) => r,
        Err(e) => {
            steps.finish("failed");
            record(
                store,
                &config.owner,
                name,
                EventKind::ReplicateFailed,
                &e.to_string(),
            )
            .await;
            return Err(Failure::Failed(e.into()));
        }
    };
    steps.finish("done");
    record(
        store,
        &config.owner,
        name,
        EventKind::Replicated,
        &round.describe(volume),
    )
    .await;
    for (region, why) in &round.failed {
        let what = format!("copying {volume} to {region} failed: {why}");
        steps.note(&what);
        record(
            store,
            &config.owner,
            name,
            EventKind::ReplicateFailed,
            &what,
        )
        .await;
    }
    Ok(!round.failed.is_empty())
}

async fn record(store: &Store, owner: &str, box_name: &str, kind: EventKind, what: &str) {
    if let Err(e) = store
        .for_owner(owner)
        .record_event(Some(box_name), kind, what)
        .await
    {
        tracing::warn!("cannot record {kind}: {e}");
    }
}
